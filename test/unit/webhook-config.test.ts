import { describe, expect, it } from 'vitest';
import { buildConfig, ConfigError } from '../../src/core/config.js';
import { derivedWebhookId } from '../../src/events/webhook-config.js';

const problems = (doc: Record<string, unknown>): string[] => {
  try {
    buildConfig({ tenants: { default: { pool: 'default' }, acme: { pool: 'default' } }, ...doc });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
};

const hook = (over: Record<string, unknown> = {}) => ({ tenant: 'acme', url: 'https://hooks.example.com/tern', secret: 'whsec-0123456789abcdef', events: ['delivered'], ...over });

describe('webhooks config', () => {
  it('accepts endpoints and fills in the delivery settings', () => {
    const c = buildConfig({
      tenants: { acme: { pool: 'default' } },
      webhooks: [hook(), hook({ id: 'ops', tenant: '*', url: 'http://10.20.1.5:8080/hook', events: ['*'] })],
      webhook_delivery: { allow_networks: ['10.20.0.0/16'] },
    });
    const [a, ops] = c.webhooks.endpoints;
    expect(a!.id).toBe(derivedWebhookId('acme', 'https://hooks.example.com/tern'));
    expect(a!.id).toMatch(/^wh-[0-9a-f]{12}$/);
    expect(a!.filter.types).toEqual(new Set(['delivered']));
    expect(ops!.filter).toEqual({ tenant: '*', types: null });
    expect(c.webhooks).toMatchObject({ timeoutMs: 10_000, batchSize: 100, backoffInitialMs: 2000, backoffMaxMs: 600_000, disableAfterMs: 86_400_000 });
    expect(c.webhooks.allowNetworks).toEqual([{ address: '10.20.0.0', prefix: 16, family: 'ipv4' }]);
  });

  it('changes the fingerprint (which re-enables a disabled endpoint) when the endpoint changes, only then', () => {
    const fp = (h: Record<string, unknown>) => buildConfig({ tenants: { acme: { pool: 'default' } }, webhooks: [h] }).webhooks.endpoints[0]!.fingerprint;
    expect(fp(hook({ id: 'x' }))).toBe(fp(hook({ id: 'x' })));
    expect(fp(hook({ id: 'x', events: ['delivered', 'failed'] }))).toBe(fp(hook({ id: 'x', events: ['failed', 'delivered'] })));
    expect(fp(hook({ id: 'x', secret: 'another-secret-0123456' }))).not.toBe(fp(hook({ id: 'x' })));
    expect(fp(hook({ id: 'x', url: 'https://hooks.example.com/v2' }))).not.toBe(fp(hook({ id: 'x' })));
  });

  it.each([
    [{ webhooks: [hook({ events: ['deliverd'] })] }, /^webhooks\[0\]\.events\[0\]: "deliverd" is not an event type; the types are accepted, delivered/],
    [{ webhooks: [hook({ events: ['warmup_advanced'] })] }, /^webhooks\[0\]\.events\[0\]: "warmup_advanced" concerns the node, not a tenant; only an endpoint with tenant "\*" gets it/],
    [{ webhooks: [hook({ events: ['*', 'delivered'] })] }, /^webhooks\[0\]\.events\[0\]: "\*" already means every event type/],
    [{ webhooks: [hook({ events: [] })] }, /^webhooks\[0\]\.events: \[\] is invalid/],
    [{ webhooks: [hook({ tenant: 'Not a tenant!' })] }, /^webhooks\[0\]\.tenant: "Not a tenant!" is neither a tenant defined under tenants nor a tenant id/],
    [{ webhooks: [hook({ secret: 'short' })] }, /^webhooks\[0\]\.secret: "short" is invalid: expected string length greater or equal to 16/],
    [{ webhooks: [hook({ url: 'hooks.example.com/x' })] }, /^webhooks\[0\]\.url: "hooks\.example\.com\/x" is not a URL; write it like "https:\/\/hooks\.example\.com\/tern"/],
    [{ webhooks: [hook({ url: 'ftp://hooks.example.com/x' })] }, /^webhooks\[0\]\.url: "ftp:\/\/hooks\.example\.com\/x" is not an http\(s\) URL/],
    [{ webhooks: [hook({ url: 'https://u:p@hooks.example.com/x' })] }, /^webhooks\[0\]\.url: .* carries credentials; remove them/],
    [{ webhooks: [hook({ url: 'http://hooks.example.com/x' })] }, /^webhooks\[0\]\.url: plain http is only for receivers on networks listed in webhook_delivery\.allow_networks; use https/],
    [{ webhooks: [hook({ url: 'https://127.0.0.1:8443/x' })] }, /^webhooks\[0\]\.url: 127\.0\.0\.1 is a loopback address; webhooks go only to public addresses unless webhook_delivery\.allow_networks lists the network/],
    [{ webhooks: [hook({ url: 'https://2130706433/x' })] }, /^webhooks\[0\]\.url: 127\.0\.0\.1 is a loopback address/], // decimal form
    [{ webhooks: [hook({ url: 'https://0x7f.1/x' })] }, /^webhooks\[0\]\.url: 127\.0\.0\.1 is a loopback address/],
    [{ webhooks: [hook({ url: 'https://[::1]/x' })] }, /^webhooks\[0\]\.url: ::1 is a loopback address/],
    [{ webhooks: [hook({ url: 'https://[::ffff:10.1.2.3]/x' })] }, /^webhooks\[0\]\.url: ::ffff:a01:203 is a private address \(RFC 1918\)/],
    [{ webhooks: [hook({ url: 'https://10.1.2.3/x' })] }, /^webhooks\[0\]\.url: 10\.1\.2\.3 is a private address \(RFC 1918\)/],
    [{ webhooks: [hook({ url: 'https://169.254.169.254/latest/meta-data' })] }, /^webhooks\[0\]\.url: 169\.254\.169\.254 is a link-local address/],
    [{ webhooks: [hook({ url: 'https://[fd12::1]/x' })] }, /^webhooks\[0\]\.url: fd12::1 is a unique local address/],
    [{ webhooks: [hook({ url: 'https://100.64.0.1/x' })] }, /carrier-grade NAT/],
    [{ webhooks: [hook({ url: 'http://10.9.0.1/x' })], webhook_delivery: { allow_networks: ['10.20.0.0/16'] } }, /^webhooks\[0\]\.url: 10\.9\.0\.1 is a private address/],
    [{ webhooks: [hook({ url: 'http://8.8.8.8/x' })], webhook_delivery: { allow_networks: ['10.20.0.0/16'] } }, /^webhooks\[0\]\.url: plain http is only for receivers on networks listed/],
    [{ webhooks: [hook({ id: 'same' }), hook({ id: 'same', url: 'https://other.example.com/' })] }, /^webhooks\[1\]\.id: "same" is used by another endpoint/],
    [{ webhooks: [hook(), hook()] }, /^webhooks\[1\]\.id: "wh-[0-9a-f]{12}" is used by another endpoint/],
    [{ webhooks: [hook({ id: 'has space' })] }, /^webhooks\[0\]\.id: /],
    [{ webhooks: [hook({ event: ['delivered'] })] }, /^webhooks\[0\]\.event: unknown key/],
    [{ webhook_delivery: { allow_networks: ['10.0.0.0/33'] } }, /^webhook_delivery\.allow_networks\[0\]: "10\.0\.0\.0\/33" has an invalid prefix length/],
    [{ webhook_delivery: { disable_after: '8d' } }, /^webhook_delivery\.disable_after: "8d" must be shorter than events\.retention/],
    [{ webhook_delivery: { backoff_initial: '1m', backoff_max: '10s' } }, /^webhook_delivery\.backoff_max: "10s" is shorter than backoff_initial/],
    [{ webhook_delivery: { timeout: 'soon' } }, /^webhook_delivery\.timeout: "soon" is not a duration/],
  ])('refuses %j', (doc, message) => {
    const found = problems(doc as Record<string, unknown>);
    expect(found.some((p) => message.test(p)), found.join('\n')).toBe(true);
  });

  it('lets the operator allow a private network (plain http included), and an operator endpoint have node events', () => {
    expect(problems({ webhooks: [hook({ url: 'http://127.0.0.1:9000/x' })], webhook_delivery: { allow_networks: ['127.0.0.0/8'] } })).toEqual([]);
    expect(problems({ webhooks: [hook({ url: 'https://[::1]:9000/x' })], webhook_delivery: { allow_networks: ['::1/128'] } })).toEqual([]);
    expect(problems({ webhooks: [hook({ tenant: '*', events: ['warmup_advanced', 'mta_sts_failure'] })] })).toEqual([]);
  });

  it('takes the id of a tenant the file does not name (one made through the control API)', () => {
    expect(problems({ webhooks: [hook({ tenant: 'api-made_1' })] })).toEqual([]);
  });
});
