/**
 * One classifier for every remote reply: the synchronous SMTP reply in the delivery path and each recipient
 * of an asynchronous DSN go through classifyResponse(). The decisions are data (config/bounce-rules.yaml:
 * ordered rules on enhanced status, reply code, code class and text → category, hard/soft, action); the
 * first rule whose every condition holds wins.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import YAML from 'yaml';
import { ConfigError, schemaProblems, SHIPPED_BOUNCE_RULES_FILE } from '../core/config.js';

/** The bounce taxonomy of DESIGN.md (the widely used open bounce-reason set). */
export const CATEGORIES = [
  'userunknown', 'mailboxfull', 'hostunknown', 'hasmoved', 'suspend', 'blocked', 'badreputation', 'requireptr',
  'authfailure', 'spamdetected', 'virusdetected', 'policyviolation', 'rejected', 'filtered', 'toomanyconn',
  'speeding', 'expired', 'norelaying', 'networkerror', 'systemerror', 'systemfull', 'mailererror', 'contenterror',
  'notcompliantrfc', 'mesgtoobig', 'exceedlimit', 'securityerror', 'failedstarttls', 'notaccept', 'syntaxerror',
  'onhold', 'delivered', 'feedback', 'vacation', 'undefined',
] as const;
export type Category = (typeof CATEGORIES)[number];

/** Categories that say the address itself is bad: it will never take mail. */
export const HARD_CATEGORIES: ReadonlySet<Category> = new Set(['userunknown', 'hostunknown', 'hasmoved', 'notaccept']);

export type BounceAction = 'suppress' | 'count' | 'none';
const ACTIONS: readonly BounceAction[] = ['suppress', 'count', 'none'];

export interface Classification {
  category: Category;
  /** the address is bad (suppress it), as opposed to a problem that may pass */
  hard: boolean;
  action: BounceAction;
  /** name of the rule that decided, or "(none)" */
  rule: string;
}

export interface ReplyFacts {
  /** enhanced status code, "5.1.1"; found in the text when absent */
  status?: string | null;
  /** SMTP reply code, 550; found at the start of the text when absent */
  code?: number | null;
  /** the reply text or diagnostic (multi-line replies are joined) */
  text?: string | null;
}

const OneOrMany = <T extends ReturnType<typeof Type.String> | ReturnType<typeof Type.Union>>(t: T) => Type.Union([t, Type.Array(t, { minItems: 1 })]);
const STATUS_PATTERN = '^[245x*]\\.(\\d{1,3}|[x*])\\.(\\d{1,3}|[x*])$';
const CODE_PATTERN = '^[2-5][0-9x]{2}$';
const StatusPattern = Type.String({ pattern: STATUS_PATTERN });
const CodePattern = Type.Union([Type.Integer({ minimum: 200, maximum: 599 }), Type.String({ pattern: CODE_PATTERN })]);
const RuleDoc = Type.Object(
  {
    name: Type.String({ minLength: 1 }),
    status: Type.Optional(OneOrMany(StatusPattern)),
    // flat, so that a bad value is reported with what a code looks like
    code: Type.Optional(Type.Union([...CodePattern.anyOf, Type.Array(CodePattern, { minItems: 1 })])),
    class: Type.Optional(Type.Union([Type.Literal(2), Type.Literal(4), Type.Literal(5), Type.Array(Type.Union([Type.Literal(2), Type.Literal(4), Type.Literal(5)]), { minItems: 1 })])),
    text: Type.Optional(Type.String({ minLength: 1 })),
    category: Type.String(),
    hard: Type.Optional(Type.Boolean()),
    action: Type.Optional(Type.String()),
  },
  { additionalProperties: false },
);
const RulesFile = Type.Object(
  {
    rules: Type.Array(RuleDoc),
    include_shipped: Type.Optional(Type.Boolean({ description: 'after these rules, try the shipped ones' })),
  },
  { additionalProperties: false },
);
export type BounceRuleDoc = Static<typeof RuleDoc>;

interface CompiledRule {
  name: string;
  status: RegExp | null;
  code: RegExp | null;
  classes: string | null;
  text: RegExp | null;
  category: Category;
  hard: boolean | null;
  action: BounceAction | null;
}

export interface BounceRules {
  readonly rules: readonly CompiledRule[];
  /** the files the rules came from, in the order they are tried */
  readonly files: readonly string[];
}

export { SHIPPED_BOUNCE_RULES_FILE };

const PATTERN_HINTS = {
  [STATUS_PATTERN]: 'an enhanced status code; write it like "5.1.1", or "4.7.*" for any detail',
  [CODE_PATTERN]: 'a reply code; write it like 550, or "55x" for 550–559',
};

function readRulesFile(file: string, label: string): unknown {
  try {
    return YAML.parse(fs.readFileSync(file, 'utf8')) ?? {};
  } catch (err) {
    throw new ConfigError([`${label}: cannot read ${file}: ${(err as Error).message}`]);
  }
}

function compile(doc: unknown, label: string, problems: string[]): { rules: CompiledRule[]; includeShipped: boolean } {
  const found = schemaProblems(RulesFile, doc, PATTERN_HINTS);
  if (found.length) {
    problems.push(...found.map((p) => `${label}: ${p}`));
    return { rules: [], includeShipped: false };
  }
  const typed = doc as Static<typeof RulesFile>;
  const rules: CompiledRule[] = [];
  const names = new Set<string>();
  typed.rules.forEach((r, i) => {
    const at = `${label}: rules[${i}]`;
    if (names.has(r.name)) problems.push(`${at}.name: "${r.name}" is the name of an earlier rule; give each rule its own name`);
    names.add(r.name);
    if (!(CATEGORIES as readonly string[]).includes(r.category))
      problems.push(`${at}.category: "${r.category}" is not a category; use one of ${CATEGORIES.join(', ')}`);
    if (r.action !== undefined && !(ACTIONS as readonly string[]).includes(r.action))
      problems.push(`${at}.action: "${r.action}" is not an action; use suppress, count or none`);
    let text: RegExp | null = null;
    if (r.text !== undefined) {
      try {
        text = new RegExp(r.text, 'i');
      } catch (err) {
        problems.push(`${at}.text: ${(err as Error).message}`);
      }
    }
    const list = <T>(v: T | T[] | undefined): T[] | null => (v === undefined ? null : Array.isArray(v) ? v : [v]);
    const statuses = list(r.status);
    const codes = list(r.code);
    const classes = list(r.class);
    rules.push({
      name: r.name,
      status: statuses && new RegExp(`^(?:${statuses.map(statusRegex).join('|')})$`),
      code: codes && new RegExp(`^(?:${codes.map((c) => String(c).replace(/x/g, '\\d')).join('|')})$`),
      classes: classes && classes.join(''),
      text,
      category: r.category as Category,
      hard: r.hard ?? null,
      action: (r.action as BounceAction | undefined) ?? null,
    });
  });
  return { rules, includeShipped: typed.include_shipped ?? false };
}

/** "5.1.*" → 5\.1\.\d{1,3}; "x.7.1" → [245]\.7\.1 */
function statusRegex(pattern: string): string {
  return pattern
    .split('.')
    .map((part, i) => (part === 'x' || part === '*' ? (i === 0 ? '[245]' : '\\d{1,3}') : part))
    .join('\\.');
}

/** Rules from a parsed document (tests, inline rules); problems are named by key path, all at once. */
export function bounceRulesFromDocument(doc: unknown, label = 'bounce-rules'): BounceRules {
  const problems: string[] = [];
  const { rules } = compile(doc, label, problems);
  if (problems.length) throw new ConfigError(problems);
  return { rules, files: [] };
}

/**
 * Reads and validates a rules file. `extra` (a file, or rule documents) is tried first: that is how an
 * operator adds rules without copying the shipped ones. A file with `include_shipped: true` is followed by
 * the shipped rules.
 */
export function loadBounceRules(file: string, extra?: string | BounceRuleDoc[]): BounceRules {
  const problems: string[] = [];
  const out: CompiledRule[] = [];
  const files: string[] = [];
  const add = (doc: unknown, label: string, from: string | null) => {
    const { rules, includeShipped } = compile(doc, label, problems);
    out.push(...rules);
    if (from) files.push(from);
    return includeShipped;
  };
  if (extra !== undefined) {
    const label = typeof extra === 'string' ? `bounce-rules (${extra})` : 'bounce-rules (extra)';
    const doc = typeof extra === 'string' ? readRulesFile(extra, label) : { rules: extra };
    if (add(doc, label, typeof extra === 'string' ? extra : null) && path.resolve(file) !== SHIPPED_BOUNCE_RULES_FILE)
      add(readRulesFile(SHIPPED_BOUNCE_RULES_FILE, 'bounce-rules (shipped)'), 'bounce-rules (shipped)', SHIPPED_BOUNCE_RULES_FILE);
  }
  const main = path.resolve(file);
  if (add(readRulesFile(main, 'bounce-rules'), 'bounce-rules', main) && main !== SHIPPED_BOUNCE_RULES_FILE && !files.includes(SHIPPED_BOUNCE_RULES_FILE))
    add(readRulesFile(SHIPPED_BOUNCE_RULES_FILE, 'bounce-rules (shipped)'), 'bounce-rules (shipped)', SHIPPED_BOUNCE_RULES_FILE);
  if (problems.length) throw new ConfigError(problems);
  return { rules: out, files };
}

const STATUS_IN_TEXT = /(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)/;
const VALID_STATUS = /^[245]\.\d{1,3}\.\d{1,3}$/;
const LEADING_CODE = /^([2-5]\d\d)(?=[\s-]|$)/;
const CONTINUATION = /^\s*(\d{3})[- ](?:[245]\.\d{1,3}\.\d{1,3}\s+)?/;
const MULTILINE_START = /^([2-5]\d\d)-(?:([245]\.\d{1,3}\.\d{1,3}) )?/;
const MAX_TEXT = 4000;

/**
 * One line from a reply or diagnostic: the DSN type prefix ("smtp;") dropped, multi-line replies joined
 * without the repeated "550-5.1.1" of their continuation lines, whitespace collapsed.
 */
export function normalizeReplyText(text: string): string {
  const t = (text.length > MAX_TEXT ? text.slice(0, MAX_TEXT) : text).replace(/^\s*(?:smtp|x-[\w-]+)\s*;\s*/i, '');
  const lines = t.split(/\r?\n/);
  const code = LEADING_CODE.exec(lines[0]!.trimStart())?.[1];
  if (code) {
    for (let i = 1; i < lines.length; i++) {
      const m = CONTINUATION.exec(lines[i]!);
      if (m && m[1] === code) lines[i] = lines[i]!.slice(m[0].length);
    }
  }
  let joined = lines.join(' ');
  // a multi-line reply folded into one line by the reporting MTA: "550-5.1.1 … Please try 550-5.1.1 double-checking
  // … go to 550 5.1.1 https://…": the repeated prefixes go, the last line's (with a space) included
  const multi = MULTILINE_START.exec(joined);
  if (multi) joined = joined.split(` ${multi[1]}-${multi[2] ?? ''}`).join(' ').split(` ${multi[1]} ${multi[2] ?? ''}`).join(' ');
  return joined.replace(/\s+/g, ' ').trim();
}

/** Classifies one remote reply (or one DSN recipient). Pure; the rules' regular expressions are precompiled. */
export function classifyResponse(rules: BounceRules, facts: ReplyFacts): Classification {
  const text = facts.text ? normalizeReplyText(facts.text) : '';
  let code = facts.code ?? null;
  if (code === null && text) {
    const m = LEADING_CODE.exec(text);
    if (m) code = Number(m[1]);
  }
  let status = facts.status && VALID_STATUS.test(facts.status.trim()) ? facts.status.trim() : null;
  if (status === null && text) status = STATUS_IN_TEXT.exec(text)?.[1] ?? null;
  const codeText = code === null ? null : String(code);
  const cls = status?.[0] ?? codeText?.[0] ?? null;

  for (const r of rules.rules) {
    if (r.status && (status === null || !r.status.test(status))) continue;
    if (r.code && (codeText === null || !r.code.test(codeText))) continue;
    if (r.classes && (cls === null || !r.classes.includes(cls))) continue;
    if (r.text && !r.text.test(text)) continue;
    return decide(r.category, r.hard, r.action, cls, r.name);
  }
  return decide(cls === '2' ? 'delivered' : 'undefined', null, null, cls, '(none)');
}

/** Fills in hard and action where a rule leaves them out. A temporary (4xx) reply is never hard by default. */
export function decide(category: Category, hard: boolean | null, action: BounceAction | null, cls: string | null, rule: string): Classification {
  const isHard = hard ?? (HARD_CATEGORIES.has(category) && cls !== '4' && cls !== '2');
  const act = action ?? (isHard || category === 'feedback' ? 'suppress' : category === 'delivered' || category === 'vacation' ? 'none' : 'count');
  return { category, hard: isHard, action: act, rule };
}
