import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import addressparser from 'nodemailer/lib/addressparser';
import { isValidAddress, parseAddressHeader } from '../../src/mta/address.js';

describe('parseAddressHeader', () => {
  // the plain forms read without the general parser must give what the general parser gives
  const atom = fc.string({ unit: fc.constantFrom(...'abcXYZ019!#$%&\'*+/=?^_`{|}~-'.split('')), minLength: 1, maxLength: 8 });
  const local = fc.array(atom, { minLength: 1, maxLength: 3 }).map((a) => a.join('.'));
  const domain = fc.array(fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?$/), { minLength: 2, maxLength: 3 }).map((l) => l.join('.'));
  const name = fc.string({ unit: fc.constantFrom(...'Ab 9z'.split('')), maxLength: 10 });
  const value = fc.tuple(local, domain, name, fc.constantFrom('bare', 'angle', 'named')).map(([l, d, n, form]) =>
    form === 'bare' ? `${l}@${d}` : form === 'angle' ? `<${l}@${d}>` : `${n} <${l}@${d}>`,
  );

  it('reads a plain mailbox as the general parser does', () => {
    fc.assert(
      fc.property(value, fc.boolean(), (v, utf8) => {
        const general = (addressparser(v) as Array<{ address?: string }>).map((e) => e.address);
        const got = parseAddressHeader(v, { utf8, allowGroups: false });
        if (general.length === 1 && general[0] && isValidAddress(general[0], utf8)) expect(got).toEqual({ addresses: [general[0]] });
        else expect(got).toHaveProperty('error');
      }),
    );
  });

  it('still refuses what is not a mailbox, and reads lists and groups', () => {
    expect(parseAddressHeader('a@b', { utf8: false, allowGroups: false })).toHaveProperty('error'); // one-label domain
    expect(parseAddressHeader('<a..b@example.com>', { utf8: false, allowGroups: false })).toEqual({ error: '"a..b@example.com" is not a valid mail address' });
    expect(parseAddressHeader('A <a@example.com>, b@example.org', { utf8: false, allowGroups: true })).toEqual({ addresses: ['a@example.com', 'b@example.org'] });
    expect(parseAddressHeader('team: a@example.com;', { utf8: false, allowGroups: false })).toEqual({ error: 'group syntax is not allowed here' });
    expect(parseAddressHeader('"Doe, J." <j@example.com>', { utf8: false, allowGroups: false })).toEqual({ addresses: ['j@example.com'] });
  });
});
