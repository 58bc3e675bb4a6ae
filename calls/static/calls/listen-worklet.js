// Plays both sides of a live call in an 8 kHz AudioContext: output 0 the caller, output 1 the
// agent (or the staff member holding the call), each at the stream time the caller heard it.
//
// Messages from the page are the server's batches (ArrayBuffer), records back to back:
//   u8 kind (0 caller, 1 agent, 2 clear) | u32 start (stream ms) | u16 length | mu-law bytes
// Caller audio arrives in real time; the agent's arrives faster than real time, stamped with
// when Twilio will play it. Both wait in a queue keyed by stream sample; the playhead runs
// TARGET behind the newest caller audio, so a late batch still plays (the jitter buffer), and
// is pulled back toward TARGET if it drifts. A clear at T drops the agent's audio from T on,
// as Twilio drops it for the caller. (docs/twilio-media-streams.md#listening-in-from-a-browser)

const RATE = 8000;
const PER_MS = RATE / 1000;
const CALLER = 0, AGENT = 1, CLEAR = 2;
const REPORT_EVERY = RATE / 4;  // samples between reports to the page (250 ms)

// G.711 mu-law: the 256 values a byte stands for, as floats.
const ULAW = new Float32Array(256);
for (let i = 0; i < 256; i++) {
    const u = ~i & 0xff;
    const magnitude = ((((u & 0x0f) << 3) + 0x84) << ((u >> 4) & 0x07)) - 0x84;
    ULAW[i] = (u & 0x80 ? -magnitude : magnitude) / 32768;
}

class ListenPlayer extends AudioWorkletProcessor {
    constructor(options) {
        super();
        const opts = options.processorOptions || {};
        this.target = (opts.targetMs || 150) * PER_MS;
        this.slack = (opts.slackMs || 200) * PER_MS;
        this.queues = [[], []];  // per side: {start, data: Float32Array, end}
        this.playhead = -1;  // stream sample played next; -1 until the first caller audio
        this.newestCaller = -1;
        this.sinceReport = 0;
        this.port.onmessage = (event) => this.receive(event.data);
    }

    receive(message) {
        if (message && message.flush !== undefined) {
            this.queues[AGENT].length = 0;
            return;
        }
        const view = new DataView(message);
        let offset = 0;
        while (offset + 7 <= view.byteLength) {
            const kind = view.getUint8(offset);
            const start = view.getUint32(offset + 1, true) * PER_MS;
            const length = view.getUint16(offset + 5, true);
            offset += 7;
            if (kind === CLEAR) {
                this.clearAgent(start);
                continue;
            }
            const bytes = new Uint8Array(message, offset, Math.min(length, view.byteLength - offset));
            offset += length;
            const data = new Float32Array(bytes.length);
            for (let i = 0; i < bytes.length; i++) data[i] = ULAW[bytes[i]];
            this.queues[kind === CALLER ? CALLER : AGENT].push({start, data, end: start + data.length});
            if (kind === CALLER) this.callerArrived(start + data.length);
        }
    }

    callerArrived(end) {
        this.newestCaller = Math.max(this.newestCaller, end);
        const lead = end - this.playhead;
        if (this.playhead < 0 || lead < 0 || lead > this.target + this.slack) {
            // First audio, audio later than the playhead, or too much buffered: re-anchor.
            this.playhead = Math.max(0, end - this.target);
        }
    }

    clearAgent(at) {
        const queue = this.queues[AGENT];
        for (let i = queue.length - 1; i >= 0; i--) {
            const chunk = queue[i];
            if (chunk.start >= at) queue.splice(i, 1);
            else if (chunk.end > at) {
                chunk.data = chunk.data.subarray(0, at - chunk.start);
                chunk.end = at;
            }
        }
    }

    process(inputs, outputs) {
        const frames = outputs[0][0].length;
        if (this.playhead < 0) return true;
        const from = this.playhead, to = from + frames;
        for (let side = 0; side < 2; side++) {
            const out = outputs[side][0];
            const queue = this.queues[side];
            let keep = 0;
            for (let i = 0; i < queue.length; i++) {
                const chunk = queue[i];
                if (chunk.end <= from) continue;  // late or played: dropped
                if (chunk.start < to) {
                    const a = Math.max(chunk.start, from), b = Math.min(chunk.end, to);
                    out.set(chunk.data.subarray(a - chunk.start, b - chunk.start), a - from);
                }
                queue[keep++] = chunk;
            }
            queue.length = keep;
        }
        this.playhead = to;
        this.sinceReport += frames;
        if (this.sinceReport >= REPORT_EVERY) {
            this.sinceReport = 0;
            // Stream ms played at the start of this quantum, and when (context time).
            this.port.postMessage({
                playedMs: from / PER_MS,
                at: currentTime,
                bufferedMs: (this.newestCaller - from) / PER_MS,
                agentQueuedMs: this.queues[AGENT].reduce((n, c) => n + c.end - Math.max(c.start, from), 0) / PER_MS,
            });
        }
        return true;
    }
}

registerProcessor("listen-player", ListenPlayer);
