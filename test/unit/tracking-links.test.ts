import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { planHtml } from '../../src/tracking/html.js';
import { planText } from '../../src/tracking/text.js';

const OWN = 'https://t.example.net';
const utf8 = (raw: string) => Buffer.from(raw, 'latin1').toString('utf8');
/** HTML as the bytes of a UTF-8 part, read the way the planner reads them (latin1) */
const bytes = (html: string) => Buffer.from(html, 'utf8').toString('latin1');

function links(html: string) {
  const source = bytes(html);
  const plan = planHtml(source, { decode: utf8, ownBase: OWN });
  return { plan, source, urls: plan.links.map((l) => l.url), spans: plan.links.map((l) => utf8(source.slice(l.start, l.end))) };
}

describe('HTML links', () => {
  it.each([
    ['double quotes', '<a href="https://example.com/a">x</a>', ['https://example.com/a']],
    ['single quotes', "<a href='https://example.com/a'>x</a>", ['https://example.com/a']],
    ['no quotes', '<a href=https://example.com/a?b=1>x</a>', ['https://example.com/a?b=1']],
    ['uppercase tag and attribute', '<A HREF="https://example.com/A">x</A>', ['https://example.com/A']],
    ['spaces around =', '<a href = "https://example.com/s" >x</a>', ['https://example.com/s']],
    ['&amp; in the query', '<a href="https://example.com/?a=1&amp;b=2&amp;c=3">x</a>', ['https://example.com/?a=1&b=2&c=3']],
    ['numeric references', '<a href="https://example.com/?a=1&#38;b=2&#x26;c=%41">x</a>', ['https://example.com/?a=1&b=2&c=%41']],
    ['a legacy entity name before = stays as written', '<a href="https://example.com/?x=1&copy=2&reg=3">x</a>', ['https://example.com/?x=1&copy=2&reg=3']],
    ['a bare & stays', '<a href="https://example.com/?q=salt & pepper">x</a>', ['https://example.com/?q=salt%20&%20pepper']],
    ['&amp;amp; means a literal &amp;', '<a href="https://example.com/?a=1&amp;amp;b=2">x</a>', ['https://example.com/?a=1&amp;b=2']],
    ['fragment kept', '<a href="https://example.com/p#frag?not=query">x</a>', ['https://example.com/p#frag?not=query']],
    ['percent-escapes kept as written', '<a href="https://example.com/%7Euser/a%2Fb?x=%20%2B">x</a>', ['https://example.com/%7Euser/a%2Fb?x=%20%2B']],
    ['non-ASCII path, query and fragment', '<a href="https://example.com/päth?q=ü#é">x</a>', ['https://example.com/p%C3%A4th?q=%C3%BC#%C3%A9']],
    ['IDN host', '<a href="https://bücher.example/">x</a>', ['https://xn--bcher-kva.example/']],
    ['whitespace around the URL', '<a href="\n  https://example.com/w \t">x</a>', ['https://example.com/w']],
    ['area and VML shapes', '<map><area href="https://example.com/area"></map><v:roundrect href="https://example.com/vml"></v:roundrect>', ['https://example.com/area', 'https://example.com/vml']],
    ['<base> makes relative links absolute, wherever it is', '<a href="rel?x=1">x</a><head><base href="https://base.example/dir/"></head><a href="/root">y</a>', ['https://base.example/dir/rel?x=1', 'https://base.example/root']],
    ['only the first <base> counts', '<base href="https://one.example/"><base href="https://two.example/"><a href="p">x</a>', ['https://one.example/p']],
    ['the first of two href attributes wins', '<a href="https://example.com/first" href="https://example.com/second">x</a>', ['https://example.com/first']],
    ['self-closing tag', '<a href="https://example.com/sc"/>', ['https://example.com/sc']],
    ['links in Outlook conditional comments', '<!--[if mso]><a href="https://example.com/mso">x</a><![endif]--><!--[if !mso]><!--><a href="https://example.com/other">y</a><!--<![endif]-->', ['https://example.com/mso', 'https://example.com/other']],
    ['an entity-encoded scheme is a link', '<a href="&#104;ttps://example.com/e">x</a>', ['https://example.com/e']],
  ])('%s', (_name, html, expected) => {
    expect(links(html).urls).toEqual(expected);
  });

  it.each([
    ['mailto:', '<a href="mailto:a@example.com?subject=hi">x</a>'],
    ['tel:', '<a href="tel:+15550100">x</a>'],
    ['javascript:', '<a href="javascript:alert(1)">x</a>'],
    ['an entity-hidden javascript:', '<a href="&#106;avascript:alert(1)">x</a>'],
    ['data:', '<a href="data:text/html,hi">x</a>'],
    ['an anchor', '<a href="#top">x</a>'],
    ['an empty href', '<a href="">x</a>'],
    ['a relative link without <base>', '<a href="/path">x</a>'],
    ['<a> without href', '<a name="x">x</a>'],
    ['href without a value', '<a href>x</a>'],
    ['an unsubscribe link', '<a href="https://example.com/unsubscribe?u=1">x</a><a href="https://example.com/Opt-Out">y</a>'],
    ['data-tern-notrack', '<a data-tern-notrack href="https://example.com/n">x</a>'],
    ['clicktracking=off', '<a clicktracking=OFF href="https://example.com/n">x</a>'],
    ['our own tracking links', `<a href="${OWN}/c/abc">x</a>`],
    ['inside a comment', '<!-- <a href="https://example.com/c">x</a> -->'],
    ['inside script, style, title and textarea', '<script>"<a href=\'https://example.com/s\'>"</script><style>a[href="https://example.com/y"]{}</style><title><a href="https://example.com/t"></title><textarea><a href="https://example.com/ta"></textarea>'],
    ['in text', '<p>https://example.com/text and href="https://example.com/fake"</p>'],
    ['a link, stylesheet or image', '<link href="https://example.com/css" rel="stylesheet"><img src="https://example.com/i.png">'],
    ['ftp:', '<a href="ftp://example.com/f">x</a>'],
  ])('leaves alone: %s', (_name, html) => {
    expect(links(html).urls).toEqual([]);
  });

  it('replaces exactly the attribute value, quotes included, and nothing else', () => {
    const { spans } = links(`<p class=x><A HREF='https://example.com/a?b=1&amp;c=2'>x</A> <a href=https://example.com/u>y</a> <a title="t" href="https://example.com/d" id=z>z</a></p>`);
    expect(spans).toEqual([`='https://example.com/a?b=1&amp;c=2'`, '=https://example.com/u', '="https://example.com/d"']);
  });

  it('puts the pixel right after <body>, or at the end without one', () => {
    const withBody = '<html><head><title>x</title></head><body style="margin:0"><p>hi</p></body></html>';
    expect(withBody.slice(0, links(withBody).plan.insertAt)).toMatch(/<body style="margin:0">$/);
    const fragment = '<p>no body</p>';
    expect(links(fragment).plan.insertAt).toBe(fragment.length);
    // a <body> inside a comment is not the body
    const commented = '<!-- <body> --><p>x</p>';
    expect(links(commented).plan.insertAt).toBe(commented.length);
  });

  it('reads a very large HTML part with many links in linear time', () => {
    const row = (i: number) => `<tr><td style="padding:4px"><a href="https://example.com/p/${i}?utm_source=x&amp;n=${i}">Item ${i}</a> – détails</td></tr>\r\n`;
    const html = `<html><body><table>${Array.from({ length: 20_000 }, (_, i) => row(i)).join('')}</table></body></html>`;
    const { urls } = links(html);
    expect(html.length).toBeGreaterThan(2_000_000);
    expect(urls).toHaveLength(20_000);
    expect(urls[19_999]).toBe('https://example.com/p/19999?utm_source=x&n=19999');
  });

  it('survives hostile markup without losing its place', () => {
    const html = '<a href="https://example.com/1"<a href="https://example.com/2">x</a><a <a href=">"https://example.com/3">y</a><<a/><a href="https://example.com/4">z';
    // what a browser's tokenizer reads: the first tag's attributes run into the second; a quoted ">" stays a value
    expect(links(html).urls).toEqual(['https://example.com/1', 'https://example.com/4']);
  });
});

/** A URL a sender may write, and the HTML attribute text that writes it, entities and all. */
const urlParts = fc.record({
  scheme: fc.constantFrom('http', 'https', 'HTTPS'),
  host: fc.constantFrom('example.com', 'EXAMPLE.org', 'bücher.example', 'xn--bcher-kva.example', '127.0.0.1:8080', 'shop.example.com:443', '[::1]:3000'),
  path: fc.array(fc.string({ unit: fc.constantFrom(...'abcXYZ019-._~!$&\'()*+,;=:@ %äé日€'.split(''), '%2F', '%41', '%e2%82%ac'), maxLength: 8 }), { maxLength: 4 }),
  query: fc.option(fc.array(fc.tuple(fc.string({ unit: fc.constantFrom(...'abc019-_.~ ü/?:@'.split(''), '%26', '%3D'), maxLength: 6 }), fc.string({ unit: fc.constantFrom(...'xyz019-_.~ ü/?:@=+'.split(''), '%26', '%23', '&amp;'), maxLength: 8 })), { maxLength: 4 })),
  fragment: fc.option(fc.string({ unit: fc.constantFrom(...'abc019-_ ?/#&=é'.split('')), maxLength: 10 })),
});

const escapeAmp = fc.constantFrom('&amp;', '&#38;', '&#x26;', '&AMP;');

describe('HTML links (property)', () => {
  it('the tracked URL is exactly what a browser navigates to for the href, however the HTML writes it', () => {
    fc.assert(
      fc.property(urlParts, fc.array(escapeAmp, { minLength: 64, maxLength: 64 }), fc.constantFrom('"', "'"), fc.boolean(), (u, amps, quote, numericNonAscii) => {
        const meant =
          `${u.scheme}://${u.host}/${u.path.join('/')}` +
          (u.query ? `?${u.query.map(([k, v]) => `${k}=${v}`).join('&')}` : '') +
          (u.fragment !== null ? `#${u.fragment}` : '');
        let n = 0;
        let attr = '';
        for (const ch of meant) {
          if (ch === '&') attr += amps[n++ % amps.length];
          else if (ch === quote) attr += quote === '"' ? '&quot;' : '&#39;';
          else if (numericNonAscii && ch.codePointAt(0)! > 127) attr += `&#${ch.codePointAt(0)};`;
          else attr += ch;
        }
        const { urls } = links(`<p><a class="btn" href=${quote}${attr}${quote}>go</a></p>`);
        expect(urls).toEqual([new URL(meant).href]);
      }),
      { numRuns: 500 },
    );
  });
});

describe('text links', () => {
  const text = (t: string) => {
    const source = bytes(t);
    return planText(source, { decode: utf8, ownBase: OWN }).map((l) => ({ url: l.url, written: utf8(source.slice(l.start, l.end)) }));
  };

  it.each([
    ['a URL between words', 'see https://example.com/a?b=1&c=2 now', ['https://example.com/a?b=1&c=2']],
    ['trailing punctuation is not part of it', 'Go to https://example.com/x. Or http://example.org/y, or https://example.net/z!', ['https://example.com/x', 'http://example.org/y', 'https://example.net/z']],
    ['angle brackets', 'Link: <https://example.com/angle?x=1>.', ['https://example.com/angle?x=1']],
    ['balanced parentheses stay, unbalanced go', '(see https://en.example.org/wiki/Foo_(bar)) and (https://example.com/p)', ['https://en.example.org/wiki/Foo_(bar)', 'https://example.com/p']],
    ['quotes', '"https://example.com/q" and \'https://example.com/s\'', ['https://example.com/q', 'https://example.com/s']],
    ['non-ASCII', 'Voir https://exemple.fr/café?q=é#à et suite', ['https://exemple.fr/caf%C3%A9?q=%C3%A9#%C3%A0']],
    ['a no-break space ends it', 'x https://example.com/nbsp\u00a0after', ['https://example.com/nbsp']],
    ['uppercase scheme', 'HTTPS://EXAMPLE.COM/Up', ['https://example.com/Up']],
    ['at a line end', 'line one https://example.com/end\r\nline two', ['https://example.com/end']],
  ])('%s', (_name, t, expected) => {
    expect(text(t).map((l) => l.url)).toEqual(expected);
  });

  it.each([
    ['mailto and plain addresses', 'mail a@example.com or mailto:a@example.com'],
    ['inside a word', 'xhttps://example.com/no and shttp://example.com/no'],
    ['a bare scheme', 'https:// and http://'],
    ['unsubscribe links', 'To unsubscribe: https://example.com/unsubscribe?id=1'],
    ['our own links', `${OWN}/c/abc`],
  ])('leaves alone: %s', (_name, t) => {
    expect(text(t)).toEqual([]);
  });

  it('replaces exactly the URL as written', () => {
    expect(text('a (https://example.com/p?x=1&y=2), b').map((l) => l.written)).toEqual(['https://example.com/p?x=1&y=2']);
  });
});
