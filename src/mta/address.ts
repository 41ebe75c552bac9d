/** Mail address syntax (RFC 5321 envelope, RFC 5322 header mailboxes, RFC 6531 UTF-8). */
import net from 'node:net';
import addressparser from 'nodemailer/lib/addressparser';

const ATEXT = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]";
const ATEXT_UTF8 = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~\\u0080-\\uFFFF-]";
const DOT_ATOM = new RegExp(`^${ATEXT}+(\\.${ATEXT}+)*$`);
const DOT_ATOM_UTF8 = new RegExp(`^${ATEXT_UTF8}+(\\.${ATEXT_UTF8}+)*$`, 'u');
const QUOTED = /^"([\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$/;
const LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
const LABEL_UTF8 = /^[\p{L}\p{N}](?:[\p{L}\p{N}\p{M}-]{0,61}[\p{L}\p{N}\p{M}])?$/u;

export function isValidDomain(domain: string, utf8 = false): boolean {
  if (domain.startsWith('[') && domain.endsWith(']')) {
    const lit = domain.slice(1, -1);
    return net.isIPv4(lit) || (lit.toLowerCase().startsWith('ipv6:') && net.isIPv6(lit.slice(5)));
  }
  if (!domain || domain.length > 253) return false;
  const labels = domain.split('.');
  if (labels.length < 2) return false;
  return labels.every((l) => (utf8 ? LABEL_UTF8.test(l) || LABEL.test(l) : LABEL.test(l)));
}

/** True when `address` is a valid `local@domain` mailbox; `utf8` allows RFC 6531 addresses. */
export function isValidAddress(address: string, utf8 = false): boolean {
  if (address.length > 254 || /[\r\n\0]/.test(address)) return false;
  const at = address.lastIndexOf('@');
  if (at < 1) return false;
  const local = address.slice(0, at);
  const domain = address.slice(at + 1);
  if (Buffer.byteLength(local) > 64) return false;
  const localOk = QUOTED.test(local) || (utf8 ? DOT_ATOM_UTF8.test(local) : DOT_ATOM.test(local));
  return localOk && isValidDomain(domain, utf8);
}

export function domainOf(address: string): string {
  return address.slice(address.lastIndexOf('@') + 1).toLowerCase();
}

interface ParsedAddress {
  address?: string;
  name?: string;
  group?: ParsedAddress[];
}

/** One mailbox, with at most a display name of letters, digits and spaces: group 1 or 2 is the address. */
const PLAIN_MAILBOX = /^(?:[A-Za-z0-9 ]*<([^<>\s",;:()[\]\\]+)>|([^<>\s",;:()[\]\\]+))$/;

/**
 * Checks an address-list header value (From, To, Cc, Reply-To, Sender…). Returns the mailboxes it names or
 * a sentence saying what is wrong.
 */
export function parseAddressHeader(value: string, opts: { utf8: boolean; allowGroups: boolean; single?: boolean }): { addresses: string[] } | { error: string } {
  // most headers name one mailbox plainly ("Name <a@b>", "<a@b>", "a@b"): read without the general parser,
  // which costs as much as the rest of a message's checks; anything else (or invalid) takes the full path
  const plain = PLAIN_MAILBOX.exec(value);
  const address = plain?.[1] ?? plain?.[2];
  if (address && isValidAddress(address, opts.utf8)) return { addresses: [address] };
  const parsed = addressparser(value) as ParsedAddress[];
  const addresses: string[] = [];
  const visit = (entries: ParsedAddress[], inGroup: boolean): string | null => {
    for (const e of entries) {
      if (e.group) {
        if (!opts.allowGroups || inGroup) return `group syntax is not allowed here`;
        const err = visit(e.group, true);
        if (err) return err;
        continue;
      }
      if (!e.address || !isValidAddress(e.address, opts.utf8)) return `"${e.address || e.name || ''}" is not a valid mail address`;
      addresses.push(e.address);
    }
    return null;
  };
  const err = visit(parsed, false);
  if (err) return { error: err };
  if (!addresses.length && !parsed.some((e) => e.group)) return { error: 'no address given' };
  if (opts.single && addresses.length !== 1) return { error: 'exactly one address is required' };
  return { addresses };
}
