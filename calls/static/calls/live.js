/* The live calls page.
 *
 * The server sends a snapshot when the socket opens (and on {"action": "resync"}), then small
 * deltas: "call" (a call's summary), "transcript" (one line, new or updated), "event" (one
 * entry of a call's log) and "speaking" (who is audible now). Each live call is a card cloned
 * from the page's <template>, which holds only the actions this user may take, as forms the
 * server rendered. The socket reconnects by itself, and each reconnection brings a fresh
 * snapshot.
 *
 * The words are the server's: the messages carry labels (status_label, offset_label, …) and
 * the page's config the rest, so this script formats no call, line or event itself.
 */
"use strict";

(() => {
    const config = JSON.parse(document.getElementById("live-config").textContent);
    const csrfToken = document.querySelector("input[name=csrfmiddlewaretoken]").value;
    const list = document.getElementById("live-calls");
    const template = document.getElementById("live-call-template");
    const connection = document.getElementById("live-connection");
    const countLabel = document.getElementById("live-count");
    const emptyNote = document.getElementById("live-empty");
    const zoneNote = document.getElementById("live-time-zone");
    const sortChoice = document.getElementById("live-sort");
    const agentFilter = document.getElementById("live-filter-agent");
    const statusFilter = document.getElementById("live-filter-status");
    const compactToggle = document.getElementById("live-compact");
    const hiddenNote = document.getElementById("live-hidden");

    const ENDED_LINGER_MS = 4000; // an ended call stays, greyed, long enough to see why it left
    const RECENT_EVENTS = config.recentEvents; // as many as a snapshot brings
    const FORGET_ENDED_MS = 60000; // how long late deltas of a call that is not shown are ignored
    const RETRY_MIN_MS = 500;
    const RETRY_MAX_MS = 15000;
    const RESYNC_MIN_INTERVAL_MS = 2000;
    const FAILURES_BEFORE_HINT = 3;
    const CONFIRM_MS = 4000;
    const SPEAKING = config.labels.speaking; // speaker ("" for nobody) -> words
    const COMPACT_KEY = "voicebot.live.compact"; // this browser remembers the staff's choice

    const calls = new Map(); // call id -> {summary, card, lines: Map(entry id -> <li>)}
    // Calls that ended, or that a snapshot was asked about: their late deltas are expected.
    const notShown = new Set();
    let targets = {}; // agent id -> [{name, number, is_default, mode}]
    let clockOffsetMs = 0; // the server's clock minus ours
    let socket = null;
    let retryMs = RETRY_MIN_MS;
    let failures = 0; // connection attempts in a row that did not open
    let lastResyncAt = 0;
    let resyncTimer = null;

    // --- the socket ----------------------------------------------------------------------

    function connect() {
        const scheme = location.protocol === "https:" ? "wss://" : "ws://";
        socket = new WebSocket(scheme + location.host + config.socketPath);
        showConnection("connecting", "Connecting…");
        socket.addEventListener("open", () => {
            failures = 0;
            showConnection("connecting", "Syncing…");
        });
        socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
        socket.addEventListener("close", () => {
            socket = null;
            const delayMs = retryMs * (0.75 + Math.random() / 2);
            retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
            const seconds = Math.max(1, Math.round(delayMs / 1000));
            failures += 1;
            // A socket refused again and again is usually a session that has expired.
            const hint = failures >= FAILURES_BEFORE_HINT
                ? " If this goes on, reload the page: you may need to log in again."
                : "";
            showConnection("offline", `Disconnected. Reconnecting in ${seconds} s…${hint}`);
            setTimeout(connect, delayMs);
        });
    }

    function resync() {
        // Asked for when the page may have missed a delta; the server answers with a snapshot.
        // At most one every RESYNC_MIN_INTERVAL_MS, and a request in between is deferred.
        if (resyncTimer) return;
        const waitMs = Math.max(0, lastResyncAt + RESYNC_MIN_INTERVAL_MS - Date.now());
        resyncTimer = setTimeout(() => {
            resyncTimer = null;
            // Closed: the reconnection brings a snapshot anyway.
            if (!socket || socket.readyState !== WebSocket.OPEN) return;
            lastResyncAt = Date.now();
            socket.send(JSON.stringify({action: "resync"}));
        }, waitMs);
    }

    function showConnection(state, text) {
        connection.dataset.state = state;
        connection.textContent = text;
        list.dataset.stale = String(state !== "live");
    }

    function handle(message) {
        switch (message.event) {
            case "snapshot":
                applySnapshot(message);
                break;
            case "call":
                upsertCall(message.call);
                break;
            case "transcript":
                withCall(message.call_id, (call) => putLine(call, message.entry));
                break;
            case "event":
                withCall(message.call_id, (call) => addEvent(call, message.entry));
                break;
            case "speaking":
                withCall(message.call_id, (call) => showSpeaking(call, message.speaker));
                break;
        }
    }

    function withCall(callId, work) {
        const call = calls.get(callId);
        if (call) {
            work(call);
        } else if (!notShown.has(callId)) {
            // A call we never heard of: catch up, once (late news of an old call is normal).
            forgetLater(callId);
            resync();
        }
    }

    function applySnapshot(snapshot) {
        retryMs = RETRY_MIN_MS;
        if (snapshot.now) clockOffsetMs = parseTime(snapshot.now) - Date.now();
        if (snapshot.time_zone_label) zoneNote.textContent = `Times in ${snapshot.time_zone_label}`;
        targets = snapshot.targets || {};
        const present = new Set();
        for (const summary of snapshot.calls) {
            present.add(summary.id);
            const call = upsertCall(summary, {fromSnapshot: true});
            if (!call) continue;
            for (const entry of summary.transcript || []) putLine(call, entry);
            call.card.querySelector(".live-events").replaceChildren();
            for (const entry of summary.events || []) addEvent(call, entry);
            fillTargets(call);
        }
        for (const id of calls.keys()) {
            if (!present.has(id)) removeCall(id);
        }
        showConnection("live", "Live");
        updateCount();
        arrange();
    }

    // --- cards ---------------------------------------------------------------------------

    function upsertCall(summary, {fromSnapshot = false} = {}) {
        if (summary.ended) {
            endCall(summary);
            return null;
        }
        let call = calls.get(summary.id);
        if (!call) {
            call = createCard(summary);
            calls.set(summary.id, call);
            list.append(call.card);
            updateCount();
        }
        call.summary = summary;
        renderHead(call);
        if (!fromSnapshot) arrange();
        // A call of an agent the last snapshot did not cover: fetch its transfer targets.
        if (!fromSnapshot && summary.agent_id != null && !(summary.agent_id in targets)) resync();
        return call;
    }

    function createCard(summary) {
        const card = template.content.firstElementChild.cloneNode(true);
        card.dataset.callId = summary.id;
        card.querySelector(".live-detail-link").href = urlFor("detail", summary.id);
        card.querySelector(".live-sid").textContent = summary.sid;
        const call = {summary, card, lines: new Map()};
        bindActions(call);
        fillTargets(call);
        return call;
    }

    function renderHead(call) {
        const {summary, card} = call;
        card.dataset.status = summary.status;
        card.querySelector(".live-direction").textContent = summary.direction_label;
        card.querySelector(".live-caller").textContent = summary.caller_label;
        card.querySelector(".live-agent").textContent = summary.agent_label;
        card.querySelector(".live-status").textContent = summary.status_label;
        card.querySelector(".live-started").textContent = summary.started_time || "";
        const reasons = summary.needs_attention || [];
        const attention = card.querySelector(".live-attention");
        attention.hidden = reasons.length === 0;
        attention.querySelector(".live-attention-text").textContent = reasons.join(" · ");
        card.dataset.attention = String(reasons.length > 0);
        const transferred = card.querySelector(".live-transferred");
        transferred.hidden = !summary.transferred_to;
        if (summary.transferred_to) {
            // The stream is gone: the caller talks to a person now. Only hanging up remains.
            transferred.textContent = summary.transferred_label;
            for (const form of card.querySelectorAll(".live-clear, .live-transfer, .live-say")) {
                form.hidden = true;
            }
        }
        renderDuration(call);
    }

    function renderDuration(call) {
        const started = parseTime(call.summary.answered_at || call.summary.created_at);
        const element = call.card.querySelector(".live-duration");
        element.textContent = Number.isNaN(started)
            ? "–"
            : clock(Date.now() + clockOffsetMs - started);
    }

    function endCall(summary) {
        const call = calls.get(summary.id);
        forgetLater(summary.id);
        if (!call) return;
        if (call.ending) {
            // Twilio's status callback and our own hang-up each say the call ended, in
            // either order: the one that knows why is kept, whichever came last.
            if (summary.end_reason || !call.summary.end_reason) showEnded(call, summary);
            return;
        }
        call.ending = true;
        showEnded(call, summary);
        const {card} = call;
        card.classList.add("live-call-ended");
        card.querySelector(".live-actions")?.remove();
        showSpeaking(call, "");
        updateCount();
        setTimeout(() => removeCall(summary.id), ENDED_LINGER_MS);
    }

    function showEnded(call, summary) {
        call.summary = summary;
        call.card.dataset.status = summary.status;
        call.card.querySelector(".live-status").textContent = summary.ended_label;
    }

    function forgetLater(id) {
        if (notShown.has(id)) return;
        notShown.add(id);
        setTimeout(() => notShown.delete(id), FORGET_ENDED_MS);
    }

    function removeCall(id) {
        const call = calls.get(id);
        if (!call) return;
        calls.delete(id);
        call.card.remove();
        updateCount();
        arrange();
    }

    function updateCount() {
        const live = [...calls.values()].filter((call) => !call.ending).length;
        countLabel.textContent = live === 1 ? "1 live call" : `${live} live calls`;
        emptyNote.hidden = calls.size > 0;
    }

    function showSpeaking(call, speaker) {
        const known = speaker in SPEAKING ? speaker : "";
        const element = call.card.querySelector(".live-speaking");
        element.dataset.speaker = known || "none";
        element.querySelector(".live-speaking-text").textContent = SPEAKING[known];
    }

    // --- the transcript ------------------------------------------------------------------

    function putLine(call, entry) {
        const transcript = call.card.querySelector(".live-transcript");
        const stuckToBottom =
            transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 24;
        let line = call.lines.get(entry.id);
        if (!line) {
            line = document.createElement("li");
            line.className = "transcript-line";
            line.dataset.entryId = entry.id;
            line.dataset.offsetMs = entry.offset_ms;
            call.lines.set(entry.id, line);
            // Lines are kept in the order they were spoken; a caller's line can arrive late.
            const next = [...transcript.children].find((other) => comesAfter(other, entry));
            transcript.insertBefore(line, next || null);
        }
        fillLine(line, entry);
        if (stuckToBottom) transcript.scrollTop = transcript.scrollHeight;
    }

    function comesAfter(line, entry) {
        const offset = Number(line.dataset.offsetMs);
        return offset > entry.offset_ms ||
            (offset === entry.offset_ms && Number(line.dataset.entryId) > entry.id);
    }

    function fillLine(line, entry) {
        line.dataset.speaker = entry.speaker;
        line.classList.toggle("interrupted", Boolean(entry.interrupted));
        const text = element("span", "transcript-text", entry.text);
        const parts = [
            element("span", "transcript-offset", entry.offset_label),
            element("span", "transcript-speaker", entry.speaker_label),
            element("span", "transcript-body", text),
        ];
        if (entry.interrupted_label) {
            parts[2].append(element("span", "transcript-interrupted", entry.interrupted_label));
        }
        line.replaceChildren(...parts);
    }

    // --- the activity log ----------------------------------------------------------------

    function addEvent(call, entry) {
        const events = call.card.querySelector(".live-events");
        const item = document.createElement("li");
        item.append(
            element("time", "", entry.at_label || ""),
            element("span", "event-actor", entry.actor),
            " ",
            element("span", "event-kind", entry.kind_label),
        );
        if (entry.details) item.append(" ", element("span", "event-data", entry.details));
        events.append(item);
        while (events.children.length > RECENT_EVENTS) events.firstElementChild.remove();
    }

    // --- actions -------------------------------------------------------------------------

    function bindActions(call) {
        // Each action is a form the server rendered; its button names the action and the
        // words to show while it runs, and its fields are the Django form's.
        for (const form of call.card.querySelectorAll(".live-actions form")) {
            const button = form.querySelector("button[data-action]");
            form.addEventListener("submit", (event) => {
                event.preventDefault();
                const run = async () => {
                    const ok = await act(call, button, new URLSearchParams(new FormData(form)));
                    if (ok && form.classList.contains("live-say")) form.reset();
                };
                if (button.dataset.confirm) confirmThen(button, run);
                else run();
            });
        }
    }

    function confirmThen(button, action) {
        // Hanging up cannot be undone, so it takes a second click within a few seconds.
        const confirming = button.classList.contains("confirming");
        clearTimeout(button.confirmTimer);
        if (confirming) {
            unconfirm(button);
            action();
            return;
        }
        button.dataset.label = button.textContent;
        button.classList.add("confirming");
        button.textContent = button.dataset.confirm;
        button.confirmTimer = setTimeout(() => unconfirm(button), CONFIRM_MS);
    }

    function unconfirm(button) {
        button.classList.remove("confirming");
        button.textContent = button.dataset.label;
    }

    function fillTargets(call) {
        const select = call.card.querySelector(".live-transfer select");
        if (!select) return;
        const options = targets[call.summary.agent_id] || [];
        const chosen = select.value;
        select.replaceChildren(...options.map((target) => {
            const option = element("option", "", `${target.name} (${target.number}, ${target.mode})`);
            option.value = target.name;
            option.selected = chosen ? target.name === chosen : target.is_default;
            return option;
        }));
        const form = call.card.querySelector(".live-transfer");
        form.querySelector("button").disabled = options.length === 0;
        form.title = options.length ? "" : "This call's agent has no transfer targets.";
    }

    async function act(call, button, body) {
        // `body` is URL-encoded, not FormData: daphne (Twisted) answers 400 to an empty
        // multipart body, which is what a Hang up or Clear with no fields would send.
        showOutcome(call, "pending", button.dataset.pending);
        setBusy(call, true);
        try {
            const response = await fetch(urlFor(button.dataset.action, call.summary.id), {
                method: "POST",
                body,
                credentials: "same-origin",
                headers: {"X-CSRFToken": csrfToken, "Accept": "application/json"},
            });
            const reply = await response.json().catch(() => null);
            if (reply && typeof reply.message === "string") {
                // A success is shown only when the server says so: an action reaches the
                // call's stream and waits for its confirmation. "warning": done at Twilio,
                // but the stream did not confirm (the message says so).
                const kind = !reply.ok ? "error" : reply.warning ? "warning" : "success";
                showOutcome(call, kind, reply.message);
                return Boolean(reply.ok);
            }
            showOutcome(call, "error", refusal(response));
        } catch {
            showOutcome(call, "error", "The server could not be reached. Check the connection and try again.");
        } finally {
            setBusy(call, false);
        }
        return false;
    }

    function refusal(response) {
        if (response.status === 403) {
            return "The server refused (403): your session may have expired. Reload the page and try again.";
        }
        return `The server answered ${response.status} ${response.statusText}; nothing was confirmed.`;
    }

    function setBusy(call, busy) {
        for (const button of call.card.querySelectorAll(".live-actions button")) {
            button.disabled = busy;
        }
        if (!busy) fillTargets(call); // re-applies the "no targets" state
    }

    function showOutcome(call, kind, text) {
        const outcome = call.card.querySelector(".live-outcome");
        if (!outcome) return;
        outcome.hidden = false;
        outcome.dataset.kind = kind;
        outcome.textContent = text;
    }

    // --- order, filters and the compact view ---------------------------------------------

    // Each sort names a comparison of two calls; ties go to the newest first.
    const SORTS = {
        newest: () => 0,
        oldest: (a, b) => startedAt(a) - startedAt(b),
        attention: (a, b) => attentionCount(b) - attentionCount(a),
        agent: (a, b) => a.summary.agent_label.localeCompare(b.summary.agent_label),
        status: (a, b) => a.summary.status_label.localeCompare(b.summary.status_label),
    };

    function startedAt(call) {
        return parseTime(call.summary.created_at) || 0;
    }

    function attentionCount(call) {
        return (call.summary.needs_attention || []).length;
    }

    function arrange() {
        // The cards stay where they are in the page (moving them would reset their scroll);
        // CSS `order` places them.
        const compare = SORTS[sortChoice.value] || SORTS.newest;
        const ordered = [...calls.values()].sort(
            (a, b) => compare(a, b) || startedAt(b) - startedAt(a),
        );
        refillFilter(agentFilter, ordered.map((call) => call.summary.agent_label));
        refillFilter(statusFilter, ordered.map((call) => call.summary.status_label));
        let hidden = 0;
        ordered.forEach((call, index) => {
            call.card.style.order = String(index);
            const shown =
                (!agentFilter.value || call.summary.agent_label === agentFilter.value) &&
                (!statusFilter.value || call.summary.status_label === statusFilter.value);
            call.card.hidden = !shown;
            if (!shown) hidden += 1;
        });
        hiddenNote.hidden = hidden === 0;
        hiddenNote.textContent = hidden === 1
            ? "1 call is hidden by the filters."
            : `${hidden} calls are hidden by the filters.`;
    }

    function refillFilter(select, values) {
        // The choices are the calls on the page; a chosen value stays while it is chosen.
        const chosen = select.value;
        const wanted = [...new Set([...values, ...(chosen ? [chosen] : [])])].sort();
        const present = [...select.options].slice(1).map((option) => option.value);
        if (present.join("\n") === wanted.join("\n")) return;
        const all = select.options[0];
        select.replaceChildren(all, ...wanted.map((value) => {
            const option = element("option", "", value);
            option.value = value;
            return option;
        }));
        select.value = chosen;
    }

    function setCompact(compact) {
        list.classList.toggle("live-calls-compact", compact);
        compactToggle.checked = compact;
        try {
            localStorage.setItem(COMPACT_KEY, compact ? "1" : "0");
        } catch {
            // Storage refused (private mode): the choice lasts for this page only.
        }
    }

    function storedCompact() {
        try {
            return localStorage.getItem(COMPACT_KEY) === "1";
        } catch {
            return false;
        }
    }

    // --- formatting ----------------------------------------------------------------------

    function element(tag, className, ...children) {
        const node = document.createElement(tag);
        if (className) node.className = className;
        node.append(...children);
        return node;
    }

    function urlFor(name, callId) {
        return config.urls[name].replace(config.placeholder, callId);
    }

    function parseTime(iso) {
        // Python's isoformat() gives microseconds; Date.parse is only specified for ms.
        return iso ? Date.parse(iso.replace(/(\.\d{3})\d+/, "$1")) : NaN;
    }

    function clock(ms) {
        const total = Math.max(0, Math.floor(ms / 1000));
        const hours = Math.floor(total / 3600);
        const minutes = Math.floor((total % 3600) / 60);
        const seconds = String(total % 60).padStart(2, "0");
        return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${seconds}` : `${minutes}:${seconds}`;
    }


    // --- start ---------------------------------------------------------------------------

    setInterval(() => calls.forEach((call) => call.ending || renderDuration(call)), 1000);
    // A hidden tab's timers are throttled; catch up when it is looked at again.
    document.addEventListener("visibilitychange", () => {
        if (!document.hidden) resync();
    });
    for (const control of [sortChoice, agentFilter, statusFilter]) {
        control.addEventListener("change", arrange);
    }
    compactToggle.addEventListener("change", () => setCompact(compactToggle.checked));
    setCompact(storedCompact());
    updateCount();
    connect();
})();
