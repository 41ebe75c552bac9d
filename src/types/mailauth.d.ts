// mailauth ships no types for these helpers of its own; only what Tern uses is declared.
declare module 'mailauth/lib/dmarc/get-dmarc-record.js' {
  interface DmarcRecord {
    v?: string;
    p?: string;
    sp?: string;
    adkim?: string;
    aspf?: string;
    pct?: number;
    rua?: string;
    /** the record as published */
    rr: string;
    /** found at the organisational domain, not the domain itself */
    isOrgRecord: boolean;
    [tag: string]: unknown;
  }
  function getDmarcRecord(domain: string, resolver?: (name: string, rrtype: string) => Promise<unknown[]>): Promise<DmarcRecord | false>;
  export default getDmarcRecord;
}
