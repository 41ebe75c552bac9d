/**
 * Machine activity: which opens and clicks no person made (Apple Mail Privacy Protection, link scanners,
 * previews, scripts). A pure decision over one hit; the rules are data (config/tracking-agents.yaml).
 */
import fs from 'node:fs';
import { Type, type Static } from '@sinclair/typebox';
import YAML from 'yaml';
import { ConfigError, schemaProblems } from '../core/config.js';
import { NetworkList, normalizeAddress, parseCidr, type Cidr } from '../core/net.js';

const Rule = Type.Object(
  {
    name: Type.String({ pattern: '^[a-z0-9_]{1,40}$' }),
    for: Type.Optional(Type.Union([Type.Literal('open'), Type.Literal('click'), Type.Literal('both')])),
    user_agent: Type.Optional(Type.String({ minLength: 1 })),
    user_agent_is: Type.Optional(Type.String()),
    networks: Type.Optional(Type.Array(Type.String(), { minItems: 1 })),
    method: Type.Optional(Type.Literal('HEAD')),
  },
  { additionalProperties: false },
);
const AgentsFile = Type.Object({ rules: Type.Array(Rule) }, { additionalProperties: false });

export type HitKind = 'open' | 'click';

export interface Hit {
  kind: HitKind;
  userAgent: string;
  ip: string;
  method: string;
}

interface CompiledRule {
  name: string;
  kinds: Set<HitKind>;
  userAgent: RegExp | null;
  userAgentIs: string | null;
  networks: Networks | null;
  head: boolean;
}

/** IPv4 as a number, or -1. */
function ipv4(address: string): number {
  let n = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < address.length; i++) {
    const c = address.charCodeAt(i);
    if (c === 46) {
      if (!digits || ++dots > 3) return -1;
      n = n * 256 + octet;
      octet = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57 && digits < 3) {
      octet = octet * 10 + (c - 48);
      digits++;
      if (octet > 255) return -1;
    } else return -1;
  }
  return dots === 3 && digits ? n * 256 + octet : -1;
}

/**
 * A rule's networks: IPv4 ones compared as numbers (on every open and click, BlockList's per-call address
 * object was a measurable share of the listener's time), IPv6 through NetworkList.
 */
class Networks {
  private readonly v4: Array<[network: number, mask: number]> = [];
  private readonly v6: NetworkList;
  constructor(cidrs: Cidr[]) {
    for (const c of cidrs.filter((c) => c.family === 'ipv4')) {
      const mask = c.prefix === 0 ? 0 : (~0 << (32 - c.prefix)) >>> 0;
      this.v4.push([(ipv4(c.address) & mask) >>> 0, mask]);
    }
    this.v6 = new NetworkList(cidrs.filter((c) => c.family === 'ipv6'));
  }
  contains(address: string): boolean {
    const a = ipv4(normalizeAddress(address));
    if (a < 0) return this.v6.contains(address);
    for (const [network, mask] of this.v4) if (((a & mask) >>> 0) === network) return true;
    return false;
  }
}

const UA_CACHE_SIZE = 10_000;

export class MachineAgents {
  /** which rules' user agent conditions a user agent meets (a bit per rule): user agents repeat a lot */
  private readonly uaCache = new Map<string, number>();

  private constructor(private readonly rules: CompiledRule[]) {
    if (rules.length > 31) throw new ConfigError([`tracking-agents: at most 31 rules (there are ${rules.length})`]);
  }

  /** Reads and checks a rules file; an invalid one is refused with the key path of each problem. */
  static load(file: string): MachineAgents {
    let doc: unknown;
    try {
      doc = YAML.parse(fs.readFileSync(file, 'utf8'));
    } catch (err) {
      throw new ConfigError([`tracking-agents (${file}): ${(err as Error).message}`]);
    }
    return MachineAgents.from(doc, `tracking-agents (${file})`);
  }

  static from(doc: unknown, label = 'tracking-agents'): MachineAgents {
    const problems = schemaProblems(AgentsFile, doc).map((p) => `${label}: ${p}`);
    if (problems.length) throw new ConfigError(problems);
    const rules = (doc as Static<typeof AgentsFile>).rules.map((r, i): CompiledRule => {
      let userAgent: RegExp | null = null;
      if (r.user_agent !== undefined) {
        try {
          userAgent = new RegExp(r.user_agent, 'i');
        } catch (err) {
          problems.push(`${label}: rules[${i}].user_agent: ${(err as Error).message}`);
        }
      }
      const cidrs = (r.networks ?? []).flatMap((n, j) => {
        try {
          return [parseCidr(n)];
        } catch (err) {
          problems.push(`${label}: rules[${i}].networks[${j}]: ${(err as Error).message}`);
          return [];
        }
      });
      if (r.user_agent === undefined && r.user_agent_is === undefined && !r.networks && !r.method)
        problems.push(`${label}: rules[${i}]: a rule needs a condition (user_agent, user_agent_is, networks or method)`);
      const kinds: HitKind[] = !r.for || r.for === 'both' ? ['open', 'click'] : [r.for];
      return { name: r.name, kinds: new Set(kinds), userAgent, userAgentIs: r.user_agent_is ?? null, networks: cidrs.length ? new Networks(cidrs) : null, head: r.method === 'HEAD' };
    });
    if (problems.length) throw new ConfigError(problems);
    return new MachineAgents(rules);
  }

  /** The name of the first rule that says this hit is a machine's, or null. */
  match(hit: Hit): string | null {
    const ua = this.userAgentMatches(hit.userAgent);
    for (let i = 0; i < this.rules.length; i++) {
      const r = this.rules[i]!;
      if (!r.kinds.has(hit.kind) || !(ua & (1 << i))) continue;
      if (r.head && hit.method !== 'HEAD') continue;
      if (r.networks && !r.networks.contains(hit.ip)) continue;
      return r.name;
    }
    return null;
  }

  private userAgentMatches(userAgent: string): number {
    let bits = this.uaCache.get(userAgent);
    if (bits !== undefined) return bits;
    bits = 0;
    this.rules.forEach((r, i) => {
      if ((r.userAgentIs === null || userAgent === r.userAgentIs) && (!r.userAgent || r.userAgent.test(userAgent))) bits! |= 1 << i;
    });
    if (this.uaCache.size >= UA_CACHE_SIZE) this.uaCache.clear();
    if (userAgent.length <= 512) this.uaCache.set(userAgent, bits);
    return bits;
  }
}

export interface MachineVerdict {
  machine: boolean;
  reason?: string;
}

/**
 * Machine or person, for one hit: the rules, then timing. `deliveredAt` is when the recipient's copy was
 * delivered (or accepted, when this node did not see the delivery); `trapHit` whether this recipient hit the
 * trap link from this address within the last minute.
 */
export function judgeHit(agents: MachineAgents, hit: Hit & { trap: boolean; trapHit: boolean; now: number; deliveredAt: number; scannerWindowMs: number }): MachineVerdict {
  if (hit.trap) return { machine: true, reason: 'trap_link' };
  const rule = agents.match(hit);
  if (rule) return { machine: true, reason: rule };
  if (hit.kind === 'click') {
    if (hit.trapHit) return { machine: true, reason: 'after_trap_link' };
    if (hit.now - hit.deliveredAt < hit.scannerWindowMs) return { machine: true, reason: 'too_fast' };
  }
  return { machine: false };
}
