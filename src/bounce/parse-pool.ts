/**
 * Report parsing off the main thread, with a deadline per message. The parser is bounded by design, but a
 * report comes from anyone on the Internet: if one ever takes longer than the deadline, its thread is
 * terminated and replaced and the report is `unknown`, so no message can stall the node.
 */
import { Worker } from 'node:worker_threads';
import { DEFAULT_MAX_BYTES, unknownReport, type ParseOptions, type Report } from './parse.js';
import { threadEntry } from '../core/thread-entry.js';

export interface BounceParserOptions extends ParseOptions {
  /** parsing threads (default 1; each parses one message at a time, holding up to 4 queued) */
  threads?: number;
  /** longest one parse may take once its thread has it (default 2 s) */
  deadlineMs?: number;
  /** heap limit of a parsing thread, in MB (default 256): a thread that exceeds it dies and is replaced */
  maxHeapMb?: number;
}

interface Job {
  raw: Uint8Array;
  deadlineMs: number;
  resolve: (r: Report) => void;
}

const late = (deadlineMs: number) => unknownReport(`parsing took longer than ${deadlineMs} ms; stopped`);

/** Messages handed to one thread at a time (it parses them one after the other). */
const PIPELINE = 4;

class ParserThread {
  private worker!: Worker;
  private ready = false;
  /** messages posted to the thread, oldest first: it parses them in that order, one at a time */
  private readonly inFlight: Array<{ id: number; job: Job }> = [];
  /** when the oldest in-flight message was (at the latest) taken up by the thread, and its deadline timer */
  private headStarted = 0;
  private timer: NodeJS.Timeout | null = null;
  readonly queue: Job[] = [];
  private nextId = 0;
  closed = false;

  constructor(
    /** where a thread starts (see src/core/thread-entry.ts), asked at every start */
    private readonly entry: () => URL,
    private readonly options: Required<BounceParserOptions>,
  ) {
    this.spawn();
  }

  get load(): number {
    return this.queue.length + this.inFlight.length;
  }

  private spawn(): void {
    this.ready = false;
    const worker = new Worker(this.entry(), {
      workerData: { options: { maxBytes: this.options.maxBytes, maxDepth: this.options.maxDepth } },
      resourceLimits: { maxOldGenerationSizeMb: this.options.maxHeapMb },
    });
    worker.on('message', (msg: { ready?: true; id?: number; report?: Report }) => {
      if (worker !== this.worker) return;
      if (msg.ready) {
        this.ready = true;
        return this.next();
      }
      const head = this.inFlight[0];
      if (!head || msg.id !== head.id) return;
      // a result that comes in after the deadline (this thread was too busy to run the timer first) is late
      // all the same: the deadline holds whatever the timing of the event loop
      this.finishHead(performance.now() - this.headStarted > head.job.deadlineMs ? late(head.job.deadlineMs) : msg.report!);
    });
    worker.on('error', () => {}); // reported through 'exit'
    worker.on('exit', (code) => {
      if (worker !== this.worker) return;
      if (!this.ready) {
        // it died before it could take a message (a broken install, no memory): the queued messages are
        // answered now, and the next thread starts a second later rather than in a tight loop
        for (const job of this.queue.splice(0)) job.resolve(unknownReport(`parser thread could not start (exit code ${code})`));
        if (!this.closed) setTimeout(() => !this.closed && this.spawn(), 1000).unref();
        return;
      }
      // the message it was parsing killed it (out of memory): that one is unknown, the rest go to a new thread
      this.replace(unknownReport(`parser thread exited with code ${code}`));
    });
    this.worker = worker;
  }

  /** Answers the oldest in-flight message; the next one's deadline starts now (the thread has gone on to it). */
  private finishHead(report: Report): void {
    const head = this.inFlight.shift();
    if (!head) return;
    this.restartTimer();
    head.job.resolve(report);
    this.next();
  }

  private restartTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const head = this.inFlight[0];
    if (!head) return;
    this.headStarted = performance.now();
    this.timer = setTimeout(() => this.replace(late(head.job.deadlineMs)), head.job.deadlineMs);
  }

  /**
   * Hands queued messages to the thread, up to PIPELINE at a time: the thread goes from one to the next
   * without waiting for this thread to read a result and post the next message, which is what limits the
   * rate when this thread is busy (storing reports). Each message's deadline still covers its parse alone.
   */
  next(): void {
    while (this.ready && !this.closed && this.inFlight.length < PIPELINE) {
      const job = this.queue.shift();
      if (!job) return;
      const id = ++this.nextId;
      this.inFlight.push({ id, job });
      if (this.inFlight.length === 1) this.restartTimer();
      // a copy of the bytes that will be read, moved (not copied again) to the thread
      const copy = new Uint8Array(Math.min(job.raw.byteLength, this.options.maxBytes));
      copy.set(job.raw.subarray(0, copy.byteLength));
      this.worker.postMessage({ id, raw: copy }, [copy.buffer]);
    }
  }

  /**
   * The oldest in-flight message passed its deadline or killed the thread: it gets `report`; the thread is
   * terminated and replaced, and the messages it had not reached go to the new one.
   */
  private replace(report: Report): void {
    const old = this.worker;
    this.ready = false;
    const [head, ...rest] = this.inFlight.splice(0);
    this.queue.unshift(...rest.map((r) => r.job));
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (!this.closed) this.spawn();
    void old.terminate();
    head?.job.resolve(report);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    for (const { job } of this.inFlight.splice(0)) job.resolve(unknownReport('parser closed'));
    for (const job of this.queue.splice(0)) job.resolve(unknownReport('parser closed'));
    await this.worker.terminate();
  }
}

export class BounceParser {
  private readonly threads: ParserThread[];
  private readonly deadlineMs: number;

  constructor(options: BounceParserOptions = {}) {
    const opts: Required<BounceParserOptions> = {
      threads: Math.max(1, options.threads ?? 1),
      deadlineMs: options.deadlineMs ?? 2000,
      maxHeapMb: options.maxHeapMb ?? 256,
      maxBytes: options.maxBytes ?? DEFAULT_MAX_BYTES,
      maxDepth: options.maxDepth ?? 12,
    };
    this.deadlineMs = opts.deadlineMs;
    const fromSources = import.meta.url.endsWith('.ts');
    const entry = () => threadEntry(new URL(fromSources ? './parse-worker.ts' : './parse-worker.js', import.meta.url), new URL('./parse-worker-boot.mjs', import.meta.url));
    this.threads = Array.from({ length: opts.threads }, () => new ParserThread(entry, opts));
  }

  /**
   * Parses one raw message. Never rejects: a failure or a blown deadline gives an `unknown` report saying why.
   * The deadline (default: the parser's) runs from when a thread takes the message, not while it waits.
   */
  parse(raw: Uint8Array, opts: { deadlineMs?: number } = {}): Promise<Report> {
    const deadlineMs = opts.deadlineMs ?? this.deadlineMs;
    let t = this.threads[0]!;
    for (const c of this.threads) if (c.load < t.load) t = c;
    if (t.closed) return Promise.resolve(unknownReport('parser closed'));
    return new Promise((resolve) => {
      t.queue.push({ raw, deadlineMs, resolve });
      t.next();
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.threads.map((t) => t.close()));
  }
}
