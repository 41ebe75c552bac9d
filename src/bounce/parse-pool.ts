/**
 * Report parsing off the main thread, with a deadline per message. The parser is bounded by design, but a
 * report comes from anyone on the Internet: if one ever takes longer than the deadline, its thread is
 * terminated and replaced and the report is `unknown`, so no message can stall the node.
 */
import { Worker } from 'node:worker_threads';
import { DEFAULT_MAX_BYTES, unknownReport, type ParseOptions, type Report } from './parse.js';

export interface BounceParserOptions extends ParseOptions {
  /** parsing threads (default 1; each parses one message at a time) */
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

class ParserThread {
  private worker!: Worker;
  private ready = false;
  private current: { id: number; job: Job; timer: NodeJS.Timeout; started: number } | null = null;
  readonly queue: Job[] = [];
  private nextId = 0;
  closed = false;

  constructor(
    private readonly url: URL,
    private readonly options: Required<BounceParserOptions>,
  ) {
    this.spawn();
  }

  get load(): number {
    return this.queue.length + (this.current ? 1 : 0);
  }

  private spawn(): void {
    this.ready = false;
    const worker = new Worker(this.url, {
      workerData: { options: { maxBytes: this.options.maxBytes, maxDepth: this.options.maxDepth } },
      resourceLimits: { maxOldGenerationSizeMb: this.options.maxHeapMb },
    });
    worker.on('message', (msg: { ready?: true; id?: number; report?: Report }) => {
      if (msg.ready) {
        this.ready = true;
        return this.next();
      }
      const c = this.current;
      if (!c || msg.id !== c.id) return;
      // a result that comes in after the deadline (this thread was too busy to run the timer first) is late
      // all the same: the deadline holds whatever the timing of the event loop
      this.finish(performance.now() - c.started > c.job.deadlineMs ? late(c.job.deadlineMs) : msg.report!);
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
      this.finish(unknownReport(`parser thread exited with code ${code}`));
      if (!this.closed) this.spawn();
    });
    this.worker = worker;
  }

  private finish(report: Report): void {
    const c = this.current;
    if (!c) return;
    clearTimeout(c.timer);
    this.current = null;
    c.job.resolve(report);
    this.next();
  }

  /** Hands the next queued message to the thread, with its deadline starting now. */
  next(): void {
    if (!this.ready || this.current || this.closed) return;
    const job = this.queue.shift();
    if (!job) return;
    const id = ++this.nextId;
    const timer = setTimeout(() => this.expire(job.deadlineMs), job.deadlineMs);
    this.current = { id, job, timer, started: performance.now() };
    // a copy of the bytes that will be read, moved (not copied again) to the thread
    const copy = new Uint8Array(Math.min(job.raw.byteLength, this.options.maxBytes));
    copy.set(job.raw.subarray(0, copy.byteLength));
    this.worker.postMessage({ id, raw: copy }, [copy.buffer]);
  }

  private expire(deadlineMs: number): void {
    const old = this.worker;
    // the thread may be stuck in the parse: nothing more goes to it, a new one takes the queue
    this.ready = false;
    if (!this.closed) this.spawn();
    void old.terminate();
    this.finish(late(deadlineMs));
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.queue.splice(0)) job.resolve(unknownReport('parser closed'));
    this.finish(unknownReport('parser closed'));
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
    const url = new URL(import.meta.url.endsWith('.ts') ? './parse-worker-boot.mjs' : './parse-worker.js', import.meta.url);
    this.threads = Array.from({ length: opts.threads }, () => new ParserThread(url, opts));
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
