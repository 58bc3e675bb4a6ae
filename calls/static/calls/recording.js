// A call's page: clicking a transcript line plays the recording from that moment.
// Transcript offsets are on the stream's clock; the recording starts at its own
// data-offset-ms on that clock, so the position is the difference.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
    const audio = document.querySelector("#call-recording audio");
    if (!audio) return;
    const start = Number(audio.dataset.offsetMs) || 0;
    for (const line of document.querySelectorAll(".transcript-line[data-offset-ms]")) {
        line.classList.add("seekable");
        line.title = "Play the recording from here";
        line.addEventListener("click", () => {
            audio.currentTime = Math.max(0, (Number(line.dataset.offsetMs) - start) / 1000);
            audio.play().catch(() => {});
        });
    }
});
