/**
 * Cursor pagination for every list of the control API: `?limit=&cursor=` in, `{items, next_cursor}` out.
 * A cursor is an opaque position (base64url JSON) inside the list it came from; the list's own bounds (the
 * caller's tenant, its filters) are applied on every page, so a forged cursor can only move within them.
 */
import { Type, type TSchema } from '@sinclair/typebox';
import { badRequest } from './errors.js';

export const PageQuery = {
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100, description: 'items per page (1 to 1000)' })),
  cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 1024, pattern: '^[A-Za-z0-9_-]+$', description: 'next_cursor of the previous page' })),
};

export const Page = <T extends TSchema>(item: T, description?: string) =>
  Type.Object({
    items: Type.Array(item, { description }),
    next_cursor: Type.Union([Type.String(), Type.Null()], { description: 'pass as ?cursor= for the next page; null on the last page' }),
  });

export interface PageOf<T> {
  items: T[];
  next_cursor: string | null;
}

export function encodeCursor(position: unknown): string {
  return Buffer.from(JSON.stringify(position)).toString('base64url');
}

/** The position in `cursor`, or null without one; a cursor that is not one of ours is a 400. */
export function decodeCursor<T>(cursor: string | undefined, valid: (position: unknown) => position is T): T | null {
  if (cursor === undefined) return null;
  let position: unknown;
  try {
    position = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    position = undefined;
  }
  if (!valid(position)) throw badRequest('cursor is not a cursor this list gave out; pass next_cursor from the previous page as it is', [{ field: 'query.cursor', message: 'is not a valid cursor' }]);
  return position;
}

/**
 * One page from `fetched` (read with `limit + 1` so that a further page is known to exist): the first
 * `limit` items and, when there are more, the cursor after the last of them.
 */
export function pageOf<T>(fetched: T[], limit: number, positionOf: (last: T) => unknown): PageOf<T> {
  const items = fetched.slice(0, limit);
  return { items, next_cursor: fetched.length > limit ? encodeCursor(positionOf(items.at(-1)!)) : null };
}

export const isString = (x: unknown): x is string => typeof x === 'string' && x.length <= 1024;
export const isNumber = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;

export type PageQuery = { limit?: number; cursor?: string };
