// A staff member's microphone, for the caller: the context's rate (44.1 or 48 kHz) down to
// 8 kHz (each output sample the mean of the input samples it covers: a box filter, enough for
// speech on a phone line), encoded as G.711 mu-law, posted to the page in whole 20 ms frames,
// FRAMES_PER_MESSAGE at a time, as the server accepts them.

const OUT_RATE = 8000;
const FRAME_BYTES = 160;  // 20 ms
const FRAMES_PER_MESSAGE = 3;  // 60 ms: few messages, little delay

function ulaw(sample) {
    let s = Math.round(Math.max(-1, Math.min(1, sample)) * 32767);
    const sign = s < 0 ? 0x80 : 0;
    if (s < 0) s = -s;
    s = Math.min(s, 32635) + 0x84;
    let exponent = 7;
    for (let mask = 0x4000; (s & mask) === 0 && exponent > 0; mask >>= 1) exponent--;
    const mantissa = (s >> (exponent + 3)) & 0x0f;
    return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

class MicEncoder extends AudioWorkletProcessor {
    constructor() {
        super();
        this.step = sampleRate / OUT_RATE;  // input samples per output sample
        this.phase = 0;
        this.sum = 0;
        this.count = 0;
        this.out = new Uint8Array(FRAME_BYTES * FRAMES_PER_MESSAGE);
        this.filled = 0;
    }

    process(inputs) {
        const input = inputs[0] && inputs[0][0];
        if (!input) return true;
        for (let i = 0; i < input.length; i++) {
            this.sum += input[i];
            this.count++;
            this.phase += 1;
            if (this.phase >= this.step) {
                this.phase -= this.step;
                this.out[this.filled++] = ulaw(this.sum / this.count);
                this.sum = 0;
                this.count = 0;
                if (this.filled === this.out.length) {
                    this.port.postMessage(this.out.buffer, [this.out.buffer]);
                    this.out = new Uint8Array(FRAME_BYTES * FRAMES_PER_MESSAGE);
                    this.filled = 0;
                }
            }
        }
        return true;
    }
}

registerProcessor("mic-encoder", MicEncoder);
