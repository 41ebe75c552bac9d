/** The tenant directory (src/control/tenants.ts) and the control settings of the config. */
import { afterEach, describe, expect, it } from 'vitest';
import { buildConfig, ConfigError } from '../../src/core/config.js';
import { Store } from '../../src/core/store.js';
import { controlSettings } from '../../src/control/plane.js';
import { TenantDirectory } from '../../src/control/tenants.js';
import { testConfigDoc, tempDir } from '../support/node.js';

const stores: Store[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});

function directory(dataDir: string, tenants: Record<string, unknown>, clock?: () => number) {
  const config = buildConfig(testConfigDoc(dataDir, { tenants, smtp_users: [] }));
  const store = new Store(dataDir);
  stores.push(store);
  return { dir: new TenantDirectory(store, config, clock), store };
}

describe('daily quota', () => {
  it('concurrent sessions never take more than the quota between them', async () => {
    const { dir, store } = directory(tempDir(), { default: { pool: 'default' } });
    await store.transact(() => dir.createIn({ id: 'q', name: 'q', pool: 'default', daily_quota: 5 }));
    dir.refresh('q');
    const taken = await Promise.all(Array.from({ length: 12 }, () => dir.take('q', 1)));
    expect(taken.filter(Boolean)).toHaveLength(5);
    expect(dir.usedToday('q')).toBe(5);
    expect(dir.refusal('q', 1)).toMatchObject({ reason: 'quota', smtp: { code: 452, status: '4.7.1' }, http: { status: 429 } });
    // a tenant without a quota is never counted
    expect(await dir.take('default', 1000)).toBe(true);
    expect(dir.usedToday('default')).toBe(0);
  });

  it('starts again on the next UTC day', async () => {
    let now = Date.parse('2026-11-21T23:59:00Z');
    const { dir, store } = directory(tempDir(), {}, () => now);
    await store.transact(() => dir.createIn({ id: 'q', name: 'q', pool: 'default', daily_quota: 2 }));
    dir.refresh('q');
    expect(await dir.take('q', 2)).toBe(true);
    expect(await dir.take('q', 1)).toBe(false);
    now = Date.parse('2026-11-22T00:00:01Z');
    expect(dir.refusal('q', 2)).toBeNull();
    expect(await dir.take('q', 2)).toBe(true);
  });
});

describe('config tenants and tombstones', () => {
  it('a tenant the config file drops keeps its id taken, and its mail its pool', async () => {
    const data = tempDir();
    const first = directory(data, { default: { pool: 'default' }, legacy: { pool: 'default' } });
    expect(first.dir.get('legacy')).toMatchObject({ managed_by: 'config' });
    await first.store.close();
    stores.length = 0;
    const second = directory(data, { default: { pool: 'default' } });
    expect(second.dir.get('legacy')).toBeUndefined();
    expect(second.dir.taken('legacy')).toBe(true);
    expect(second.dir.routing('legacy')?.pool).toBe('default');
  });

  it('a suspended or deleted tenant is refused with a sentence for SMTP and HTTP', async () => {
    const { dir, store } = directory(tempDir(), {});
    await store.transact(() => dir.createIn({ id: 's', name: 's', pool: 'default', suspended: true, suspended_reason: 'abuse report' }));
    dir.refresh('s');
    expect(dir.refusal('s', 1)).toMatchObject({ reason: 'suspended', smtp: { code: 550, status: '5.7.1', text: expect.stringContaining('(abuse report)') }, http: { status: 403, code: 'tenant_suspended' } });
    await store.transact(() => dir.deleteIn('s'));
    dir.refresh('s');
    expect(dir.get('s')).toBeUndefined();
    expect(dir.refusal('s', 1)).toMatchObject({ reason: 'unknown_tenant', smtp: { code: 550 } });
  });
});

describe('control settings', () => {
  it('reads defaults, and refuses a rate that is not one by key path', () => {
    const s = controlSettings(buildConfig(testConfigDoc(tempDir())));
    expect(s).toMatchObject({ sessionTtlMs: 12 * 3_600_000, publicUrl: null, mailFrom: 'tern@node.tern.test', apiRate: { count: 1200, periodMs: 60_000 }, loginRate: { count: 5 } });
    expect(controlSettings(buildConfig(testConfigDoc(tempDir(), { control: { public_url: 'https://tern.example/' } }))).publicUrl).toBe('https://tern.example');
    const refused = (() => {
      try {
        buildConfig(testConfigDoc(tempDir(), { control: { api_rate: 'lots', public_url: 'ftp://x' } }));
      } catch (err) {
        return err as ConfigError;
      }
      return null;
    })();
    expect(refused).toBeInstanceOf(ConfigError);
    expect(refused!.problems).toEqual(expect.arrayContaining([expect.stringMatching(/^control\.api_rate: "lots" is not a rate; write it like "100\/min"/), expect.stringMatching(/^control\.public_url:/)]));
  });
});
