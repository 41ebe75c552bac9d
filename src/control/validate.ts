/**
 * Validators for values that come in through the control API and may end up in a message header, an SMTP
 * command or a queue name: one-line text, mail addresses, domain names, ids. They are pure functions
 * (property-tested in test/unit/control-validate.test.ts) and TypeBox formats, so a route schema that says
 * `format: 'mailbox'` is checked by the very same code; the HTTP sending step reuses both.
 */
import { FormatRegistry, Type, type StringOptions } from '@sinclair/typebox';
import { isValidAddress, isValidDomain } from '../mta/address.js';

/** C0 controls (tab aside), DEL, C1 controls (NEL is a line break to some readers), the Unicode line and paragraph separators. */
const CONTROL = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f\u2028\u2029]/;
/** A UTF-16 surrogate without its pair: JavaScript strings can hold one, UTF-8 cannot. */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/**
 * True when `value` can go into a header field or a log line as it is: no CR, LF, NUL or other control
 * character (tab is folding white space and allowed), and no lone surrogate (not encodable as UTF-8).
 */
export function isHeaderSafe(value: string): boolean {
  return !CONTROL.test(value) && !LONE_SURROGATE.test(value);
}

/** One line of text: header-safe and not only white space. */
export function isOneLine(value: string): boolean {
  return isHeaderSafe(value) && value.trim().length > 0;
}

/** A mailbox `local@domain` (RFC 5321; UTF-8 allowed as with SMTPUTF8), nothing around it. */
export function isMailbox(value: string): boolean {
  return isHeaderSafe(value) && value === value.trim() && isValidAddress(value, true);
}

/** A domain name of at least two labels (no address literal). */
export function isDomainName(value: string): boolean {
  return !value.startsWith('[') && isValidDomain(value, false);
}

/**
 * A tenant id: lower-case letters, digits, `-` and `_`, starting with a letter or digit, at most 63. It
 * goes into queue names (`tenant:campaign@domain`) and Feedback-ID headers, so `:` `@` and spaces are out.
 */
export const TENANT_ID_PATTERN = '^[a-z0-9][a-z0-9_-]{0,62}$';
export function isTenantId(value: string): boolean {
  return new RegExp(TENANT_ID_PATTERN).test(value);
}

/** A password we accept: 10 to 256 characters (argon2 cost must not grow with input), no control characters. */
export function isPassword(value: string): boolean {
  return value.length >= 10 && value.length <= 256 && isHeaderSafe(value);
}

FormatRegistry.Set('one-line', isOneLine);
FormatRegistry.Set('mailbox', isMailbox);
FormatRegistry.Set('domain', isDomainName);
FormatRegistry.Set('password', isPassword);

/** What a value of each format looks like, for error messages. */
export const FORMAT_HINTS: Record<string, string> = {
  'one-line': 'one line of text without control characters',
  mailbox: 'a mail address like someone@example.com',
  domain: 'a domain name like mail.example.com',
  password: 'a password of 10 to 256 characters without control characters',
};

/** Schemas for API fields, each checked by the validators above. */
export const OneLine = (maxLength: number, opts: StringOptions = {}) => Type.String({ format: 'one-line', minLength: 1, maxLength, ...opts });
export const Mailbox = (opts: StringOptions = {}) => Type.String({ format: 'mailbox', maxLength: 254, ...opts });
export const DomainName = (opts: StringOptions = {}) => Type.String({ format: 'domain', maxLength: 253, ...opts });
export const Password = (opts: StringOptions = {}) => Type.String({ format: 'password', minLength: 10, maxLength: 256, ...opts });
export const TenantId = (opts: StringOptions = {}) => Type.String({ pattern: TENANT_ID_PATTERN, description: 'a tenant id: 1 to 63 lower-case letters, digits, "-" or "_"', ...opts });
