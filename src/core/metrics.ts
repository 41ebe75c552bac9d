/** prom-client metrics, one registry per node so several nodes can share a process in tests. */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class Metrics {
  readonly registry = new Registry();
  readonly messagesAccepted = new Counter({ name: 'tern_messages_accepted_total', help: 'messages accepted into the spool', labelNames: ['listener'], registers: [this.registry] });
  readonly recipientsAccepted = new Counter({ name: 'tern_recipients_accepted_total', help: 'recipients accepted into the spool', registers: [this.registry] });
  readonly recipientsSuppressed = new Counter({ name: 'tern_recipients_suppressed_total', help: "recipients dropped at acceptance: on their tenant's suppression list", registers: [this.registry] });
  readonly deliveries = new Counter({ name: 'tern_deliveries_total', help: 'delivery results per recipient', labelNames: ['result', 'site'], registers: [this.registry] });
  readonly smtpRejections = new Counter({ name: 'tern_smtp_rejections_total', help: 'commands or messages refused at reception', labelNames: ['reason'], registers: [this.registry] });
  readonly openConnections = new Gauge({ name: 'tern_outbound_connections', help: 'open outbound SMTP connections', labelNames: ['site'], registers: [this.registry] });
  readonly inboundConnections = new Gauge({ name: 'tern_inbound_connections', help: 'open inbound SMTP sessions', labelNames: ['listener'], registers: [this.registry] });
  readonly spoolCommitSeconds = new Histogram({
    name: 'tern_spool_commit_seconds',
    help: 'time from spool write to fsync completion for accepted messages',
    buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2],
    registers: [this.registry],
  });
  readonly resultCommitSeconds = new Histogram({
    name: 'tern_spool_result_commit_seconds',
    help: 'time to commit a delivery attempt\'s outcome to the spool',
    buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1],
    registers: [this.registry],
  });
  readonly queueDepth = new Gauge({ name: 'tern_queue_recipients', help: 'recipients waiting, by tier', labelNames: ['tier'], registers: [this.registry] });
  readonly warmupPostponed = new Counter({ name: 'tern_warmup_postponed_recipients_total', help: 'recipients held for the next day because no source of their pool had warmup room', registers: [this.registry] });
  readonly inboundReports = new Counter({ name: 'tern_inbound_reports_total', help: 'messages ingested by the inbound listener, by report kind (dsn, arf, autoreply, unknown; unsubscribe for List-Unsubscribe mailto requests) and result (attributed, unattributed, unknown)', labelNames: ['kind', 'result'], registers: [this.registry] });
  readonly inboundRefusals = new Counter({ name: 'tern_inbound_refusals_total', help: 'commands or messages the inbound listener refused, by reason', labelNames: ['reason'], registers: [this.registry] });
  readonly verpRejected = new Counter({ name: 'tern_verp_rejected_total', help: 'VERP addresses or X-Tern-Ref values that looked like ours and did not verify, by where they were (rcpt, report) and why (forged, malformed)', labelNames: ['where', 'reason'], registers: [this.registry] });
  readonly inboundReportSeconds = new Histogram({
    name: 'tern_inbound_report_seconds',
    help: 'time from the end of DATA to the reply for one inbound report: parse, classify, store, fsync',
    buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5],
    registers: [this.registry],
  });
  readonly readyQueueDepth = new Gauge({ name: 'tern_ready_queue_recipients', help: 'recipients in ready queues by site', labelNames: ['site'], registers: [this.registry] });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'tern_' });
  }
}
