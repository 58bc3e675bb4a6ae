// Listening in on a live call, and taking it over, from a `.listen-panel` (the live page's
// cards and a call's page). The AudioContext is made on the click (browsers let a page start
// audio only from a user gesture); the audio arrives over /ws/calls/<id>/listen and is played
// by listen-worklet.js. Taking over sends the microphone, encoded by mic-worklet.js.
"use strict";

(function () {
    const TARGET_MS = 150;  // how far the playhead runs behind the newest caller audio
    const sessions = new Map();  // call id -> Listening
    window.voicebotListen = {sessions};  // for tests and the curious: the live audio graph

    class Listening {
        constructor(panel, callId) {
            this.panel = panel;
            this.callId = callId;
            this.heldByMe = false;
            this.reports = [];  // recent worklet reports with wall-clock play times
        }

        async start() {
            const panel = this.panel;
            this.ctx = new AudioContext({sampleRate: 8000, latencyHint: "interactive"});
            await this.ctx.audioWorklet.addModule(panel.dataset.worklet);
            this.player = new AudioWorkletNode(this.ctx, "listen-player", {
                numberOfInputs: 0,
                numberOfOutputs: 2,
                outputChannelCount: [1, 1],
                processorOptions: {targetMs: TARGET_MS},
            });
            this.gains = {caller: this.ctx.createGain(), agent: this.ctx.createGain()};
            this.player.connect(this.gains.caller, 0);
            this.player.connect(this.gains.agent, 1);
            this.gains.caller.connect(this.ctx.destination);
            this.gains.agent.connect(this.ctx.destination);
            this.player.port.onmessage = (event) => this.report(event.data);
            this.applyVolumes();
            const scheme = location.protocol === "https:" ? "wss" : "ws";
            const path = panel.dataset.socketPath.replace(panel.dataset.placeholder, this.callId);
            this.socket = new WebSocket(`${scheme}://${location.host}${path}`);
            this.socket.binaryType = "arraybuffer";
            this.socket.addEventListener("open", () => this.show("listening", "Listening"));
            this.socket.addEventListener("message", (event) => this.receive(event.data));
            this.socket.addEventListener("close", () => this.stop("Not listening"));
            this.show("connecting", "Connecting…");
        }

        receive(data) {
            if (data instanceof ArrayBuffer) {
                this.player.port.postMessage(data, [data]);
                return;
            }
            const message = JSON.parse(data);
            if (message.type === "state") {
                this.setHeld(message.you, message.held_by);
            } else if (message.type === "result") {
                if (message.error) {
                    this.say(message.error);
                    if (message.action === "take_over") this.stopMic();
                } else {
                    this.setHeld(message.action === "take_over", "");
                }
            } else if (message.type === "ended") {
                this.stop(message.error || "The call has ended");
            }
        }

        report(data) {
            // Map the worklet's context time to the wall clock: when the caller's audio played.
            const stamp = this.ctx.getOutputTimestamp();
            const perf = stamp.performanceTime + (data.at - stamp.contextTime) * 1000;
            const wall = performance.timeOrigin + perf + (this.ctx.outputLatency || 0) * 1000;
            this.reports.push({playedMs: data.playedMs, wallMs: wall, bufferedMs: data.bufferedMs,
                agentQueuedMs: data.agentQueuedMs});
            if (this.reports.length > 400) this.reports.splice(0, 100);
        }

        setHeld(mine, heldBy) {
            this.heldByMe = mine;
            const panel = this.panel;
            panel.dataset.held = mine ? "me" : heldBy ? "other" : "";
            const take = panel.querySelector(".listen-take-over");
            const back = panel.querySelector(".listen-hand-back");
            if (take) take.hidden = mine || !!heldBy;
            if (back) back.hidden = !mine;
            if (mine) {
                this.show("talking", "You are talking to the caller; the agent is silent");
            } else {
                this.stopMic();
                this.show("listening", heldBy ? `Listening; ${heldBy} is talking to the caller` : "Listening");
            }
            this.applyVolumes();
        }

        async takeOver() {
            try {
                this.micStream = await navigator.mediaDevices.getUserMedia({
                    audio: {channelCount: 1, echoCancellation: true, noiseSuppression: true},
                });
            } catch (error) {
                this.say(`No microphone: ${error.message || error}`);
                return;
            }
            this.micCtx = new AudioContext();
            await this.micCtx.audioWorklet.addModule(this.panel.dataset.micWorklet);
            const source = this.micCtx.createMediaStreamSource(this.micStream);
            this.mic = new AudioWorkletNode(this.micCtx, "mic-encoder", {numberOfOutputs: 1});
            const sink = this.micCtx.createGain();
            sink.gain.value = 0;  // keeps the encoder pulled; nothing reaches the speakers
            source.connect(this.mic).connect(sink).connect(this.micCtx.destination);
            this.mic.port.onmessage = (event) => {
                if (this.heldByMe && this.socket.readyState === WebSocket.OPEN) {
                    this.socket.send(event.data);
                }
            };
            this.show("connecting", "Taking over…");
            this.socket.send(JSON.stringify({action: "take_over"}));
        }

        handBack() {
            this.socket.send(JSON.stringify({action: "hand_back"}));
        }

        stopMic() {
            if (this.micStream) this.micStream.getTracks().forEach((track) => track.stop());
            if (this.micCtx) this.micCtx.close();
            this.micStream = this.micCtx = this.mic = null;
        }

        applyVolumes() {
            for (const side of ["caller", "agent"]) {
                const slider = this.panel.querySelector(`.listen-volume[data-side=${side}]`);
                const mute = this.panel.querySelector(`.listen-mute[data-side=${side}]`);
                let volume = slider ? Number(slider.value) : 1;
                // Holding the call, the agent side is your own voice: not played back to you.
                if ((mute && mute.checked) || (side === "agent" && this.heldByMe)) volume = 0;
                if (this.gains) this.gains[side].gain.value = volume;
            }
        }

        stop(text) {
            if (this.stopped) return;
            this.stopped = true;
            sessions.delete(this.callId);
            this.stopMic();
            if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close();
            if (this.ctx) this.ctx.close();
            this.setHeld(false, "");
            this.show("idle", text || "");
        }

        show(state, text) {
            const panel = this.panel;
            panel.dataset.state = state;
            panel.querySelector(".listen-status").textContent = text;
            const on = state !== "idle";
            panel.querySelector(".listen-start").hidden = on;
            panel.querySelector(".listen-stop").hidden = !on;
            panel.querySelector(".listen-controls").hidden = !on;
            const take = panel.querySelector(".listen-take-over");
            if (take && !on) take.hidden = true;
            if (take && on && panel.dataset.held === "" && state === "listening") take.hidden = false;
        }

        say(text) {
            this.panel.querySelector(".listen-status").textContent = text;
        }
    }

    function callIdOf(panel) {
        const holder = panel.closest("[data-call-id]");
        return holder ? holder.dataset.callId : "";
    }

    document.addEventListener("click", (event) => {
        const button = event.target.closest(".listen-panel button");
        if (!button) return;
        const panel = button.closest(".listen-panel");
        const callId = callIdOf(panel);
        const listening = sessions.get(callId);
        if (button.classList.contains("listen-start") && !listening) {
            const fresh = new Listening(panel, callId);
            sessions.set(callId, fresh);
            fresh.start().catch((error) => fresh.stop(`Cannot play audio: ${error.message || error}`));
        } else if (button.classList.contains("listen-stop") && listening) {
            listening.stop("Not listening");
        } else if (button.classList.contains("listen-take-over") && listening) {
            listening.takeOver().catch((error) => listening.say(`Cannot take over: ${error.message || error}`));
        } else if (button.classList.contains("listen-hand-back") && listening) {
            listening.handBack();
        }
    });

    document.addEventListener("input", (event) => {
        const control = event.target.closest(".listen-panel input");
        if (!control) return;
        const listening = sessions.get(callIdOf(control.closest(".listen-panel")));
        if (listening) listening.applyVolumes();
    });
})();
