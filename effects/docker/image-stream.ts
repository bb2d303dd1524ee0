import { StringDecoder } from 'node:string_decoder';

/**
 * The JSON-lines progress streams of build, pull and import. The daemon answers 200
 * and reports a failure as an `errorDetail` line inside the stream, so a stream must
 * be read to its end and every line checked; stopping at the first quiet moment or
 * trusting the status code reports a failed build as a success.
 *
 * errors.ts `checkStreamLines` judges collected lines; this reader also streams the
 * progress and keeps the failing step, which a build error message must name.
 */

export interface StreamMessage {
  stream?: string;
  status?: string;
  progress?: string;
  id?: string;
  aux?: { ID?: string };
  error?: string;
  errorDetail?: { message?: string; code?: number };
}

export interface StreamOutcome {
  /** The first error line, if any; reading went on to the end regardless. */
  error: string | null;
  /** Image id from an `aux` line (build) or the last `status` (import). */
  imageId: string | null;
  /** The last "Step n/m : ..." line seen before the error (or the end). */
  step: string | null;
  /** The last few output lines of the current step, for error messages. */
  tail: string[];
}

const TAIL = 12;

// Classic-builder bookkeeping: kept out of the user's progress (the step lines say enough).
const NOISE = /^(?: ---> Running in [0-9a-f]+|Removing intermediate container [0-9a-f]+| ---> [0-9a-f]{12})$/;

// Colour codes the daemon forwards from RUN output (stderr is wrapped in \x1b[91m).
const ANSI = new RegExp(`${String.fromCharCode(0x1b)}\\[[0-9;]*[A-Za-z]`, 'g');

/**
 * Reads a progress stream to its end, passing each human line to `progress`.
 * Resolves with what it found; rejects only when the connection itself fails.
 */
export function readProgressStream(stream: NodeJS.ReadableStream, progress: (line: string) => void): Promise<StreamOutcome> {
  const outcome: StreamOutcome = { error: null, imageId: null, step: null, tail: [] };
  let pending = '';
  // A chunk boundary can fall inside a multi-byte character.
  const decoder = new StringDecoder('utf8');
  const lastStatus = new Map<string, string>();

  // `stream` messages are chunks of output, not lines (apt prints "E: " and the reason
  // separately): text is gathered here until a newline completes the line.
  let partial = '';
  const emitLine = (raw: string) => {
    const line = raw.replace(/\r/g, '').trimEnd();
    if (line === '' || NOISE.test(line)) return;
    if (/^Step \d+\/\d+ : /.test(line)) {
      outcome.step = line;
      outcome.tail = [];
    } else {
      outcome.tail.push(line);
      if (outcome.tail.length > TAIL) outcome.tail.shift();
    }
    progress(line);
  };
  const emitChunk = (text: string) => {
    const lines = (partial + text.replace(ANSI, '')).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) emitLine(line);
  };
  const flush = () => {
    if (partial !== '') emitLine(partial);
    partial = '';
  };
  const emit = (line: string) => {
    flush();
    emitLine(line.replace(ANSI, ''));
  };

  const handle = (line: string) => {
    if (line.trim() === '') return;
    let msg: StreamMessage;
    try {
      msg = JSON.parse(line) as StreamMessage;
    } catch {
      emit(line);
      return;
    }
    if (msg.errorDetail || msg.error) {
      const text = msg.errorDetail?.message ?? msg.error ?? 'unknown error';
      outcome.error ??= text;
      emit(text);
      return;
    }
    if (typeof msg.stream === 'string') emitChunk(msg.stream);
    if (msg.aux?.ID) outcome.imageId = msg.aux.ID;
    if (typeof msg.status === 'string') {
      // Pull/import repeat a status per layer with a progress bar; report each change once.
      const key = msg.id ?? '';
      const text = msg.id ? `${msg.id}: ${msg.status}` : msg.status;
      if (lastStatus.get(key) !== msg.status) {
        lastStatus.set(key, msg.status);
        emit(text);
      }
      if (/^sha256:[0-9a-f]{64}$/.test(msg.status)) outcome.imageId = msg.status;
    }
  };

  return new Promise((resolve, reject) => {
    stream.on('data', (chunk: Buffer | string) => {
      pending += typeof chunk === 'string' ? chunk : decoder.write(chunk);
      let nl = pending.indexOf('\n');
      while (nl !== -1) {
        handle(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
        nl = pending.indexOf('\n');
      }
    });
    stream.on('end', () => {
      handle(pending + decoder.end());
      flush();
      resolve(outcome);
    });
    stream.on('error', reject);
  });
}
