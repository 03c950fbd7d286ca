/**
 * Digests of query results, so a concurrent transaction's log need not keep the rows of a
 * large read to re-check it later (see concurrent/transaction.ts).
 *
 * A digest hashes, for every row, each column's SQLite type and value exactly as the engine
 * holds them (integers as 64-bit values, reals as their IEEE bits, text and blobs as their
 * bytes, read straight from the WebAssembly heap without decoding), plus the column names. What
 * the application is shown is a function of those and of the row format, which a log entry
 * keeps, so equal digests mean equal results unless the hash collides. The hash is two
 * independent 32-bit lanes (MurmurHash3's mixing, different constants), seeded at random per
 * process: the chance that two different results collide is about 2^-64 per compared block;
 * rows crafted to collide would need the seed, which never leaves the process.
 *
 * The running state is recorded every {@link DIGEST_BLOCK_ROWS} rows, so a re-check stops at
 * the first block that differs instead of reading the whole result.
 * @module
 */
import { randomBytes } from 'node:crypto';
import { loadSqlite } from '../file/load.js';

/**
 * When a concurrent transaction's read is logged as a digest: results of more than `aboveRows`
 * rows (smaller ones keep their rows, so a conflict message can show the row that differs).
 * @internal Mutable for tests, which run the isolation properties with every read digested.
 */
export const digestPolicy = { aboveRows: 64 };

/** Rows per recorded block: a re-check that differs stops within this many rows of the difference. */
export const DIGEST_BLOCK_ROWS = 256;

/** What a digest keeps of a result: its row count and the hash state at each block boundary. */
export interface RowDigest {
  readonly count: number;
  /** Two words per block boundary (after rows 256, 512, ...) and two for the end. */
  readonly marks: Uint32Array;
}

interface Columns {
  _sqlite3_column_type(ptr: number, i: number): number;
  _sqlite3_column_double(ptr: number, i: number): number;
  _sqlite3_column_int64(ptr: number, i: number): bigint;
  _sqlite3_column_text(ptr: number, i: number): number;
  _sqlite3_column_blob(ptr: number, i: number): number;
  _sqlite3_column_bytes(ptr: number, i: number): number;
  __sibliteHeap(): Uint8Array;
}

const seeds = new Uint32Array(randomBytes(8).buffer);
const f64 = new Float64Array(1);
const u32 = new Uint32Array(f64.buffer);
const TWO53 = 2 ** 53;

/** The running hash of one result, fed column by column from a stepped statement. */
export class DigestBuilder {
  private a: number;
  private b: number;
  private rows = 0;
  private readonly marks: number[] = [];
  private readonly ll = loadSqlite() as unknown as Columns;

  constructor(names: readonly string[]) {
    this.a = seeds[0] as number;
    this.b = seeds[1] as number;
    this.word(names.length);
    for (const n of names) {
      this.word(n.length);
      for (let i = 0; i < n.length; i++) this.word(n.charCodeAt(i));
    }
  }

  /** Rows hashed so far. */
  get count(): number {
    return this.rows;
  }

  /** Hashes the current row of the stepped statement `ptr` with `columns` columns. */
  addRow(ptr: number, columns: number): void {
    const ll = this.ll;
    // The lanes live in module variables while a row is hashed (no SQL runs meanwhile).
    A = this.a;
    B = this.b;
    for (let i = 0; i < columns; i++) {
      const type = ll._sqlite3_column_type(ptr, i);
      if (type === 1) {
        // INTEGER: the double is exact below 2^53; beyond, the 64-bit value. Tags 1 and 6
        // keep the two encodings apart.
        const d = ll._sqlite3_column_double(ptr, i);
        if (d > -TWO53 && d < TWO53) {
          mix(1);
          mix(d | 0);
          mix(Math.floor(d / 4294967296) | 0);
        } else {
          const v = BigInt.asUintN(64, ll._sqlite3_column_int64(ptr, i));
          mix(6);
          mix(Number(v & 0xffffffffn) | 0);
          mix(Number(v >> 32n) | 0);
        }
      } else if (type === 2) {
        f64[0] = ll._sqlite3_column_double(ptr, i);
        mix(2);
        mix(u32[0] as number);
        mix(u32[1] as number);
      } else if (type === 3 || type === 4) {
        // Text first, then its length (SQLite's documented order for a stable pointer).
        const p = type === 3 ? ll._sqlite3_column_text(ptr, i) : ll._sqlite3_column_blob(ptr, i);
        const n = ll._sqlite3_column_bytes(ptr, i);
        mix(type);
        mix(n);
        const heap = ll.__sibliteHeap();
        let j = 0;
        for (; j + 4 <= n; j += 4) {
          mix((heap[p + j] as number) | ((heap[p + j + 1] as number) << 8) | ((heap[p + j + 2] as number) << 16) | ((heap[p + j + 3] as number) << 24));
        }
        for (; j < n; j++) mix(heap[p + j] as number);
      } else {
        mix(type);
      }
    }
    this.a = A;
    this.b = B;
    if (++this.rows % DIGEST_BLOCK_ROWS === 0) this.marks.push(A >>> 0, B >>> 0);
  }

  /** The digest of the rows hashed. */
  finish(): RowDigest {
    const marks = new Uint32Array(this.marks.length + 2);
    marks.set(this.marks);
    marks[this.marks.length] = this.a ^ this.rows;
    marks[this.marks.length + 1] = this.b;
    return { count: this.rows, marks };
  }

  /**
   * Whether the rows so far agree with `expected` at the last block boundary (call after each
   * {@link DigestBuilder.addRow}; true between boundaries). False as soon as a block differs.
   */
  agrees(expected: RowDigest): boolean {
    const rows = this.rows;
    if (rows > expected.count) return false;
    if (rows % DIGEST_BLOCK_ROWS !== 0) return true;
    // rows <= expected.count, so expected has a mark for this boundary.
    const k = (rows / DIGEST_BLOCK_ROWS - 1) * 2;
    return expected.marks[k] === this.marks[k] && expected.marks[k + 1] === this.marks[k + 1];
  }

  /** Whether the finished result equals `expected`. */
  equals(expected: RowDigest): boolean {
    const mine = this.finish();
    if (mine.count !== expected.count || mine.marks.length !== expected.marks.length) return false;
    for (let i = 0; i < mine.marks.length; i++) if (mine.marks[i] !== expected.marks[i]) return false;
    return true;
  }

  private word(k: number): void {
    A = this.a;
    B = this.b;
    mix(k);
    this.a = A;
    this.b = B;
  }
}

let A = 0;
let B = 0;

/** Feeds one 32-bit word to both lanes (MurmurHash3's block step, two sets of constants). */
function mix(k: number): void {
  let x = Math.imul(k, 0xcc9e2d51);
  x = Math.imul((x << 15) | (x >>> 17), 0x1b873593);
  let a = A ^ x;
  a = (a << 13) | (a >>> 19);
  A = (Math.imul(a, 5) + 0xe6546b64) | 0;
  let y = Math.imul(k ^ 0x9e3779b9, 0x85ebca6b);
  y = Math.imul((y << 16) | (y >>> 16), 0xc2b2ae35);
  let b = B ^ y;
  b = (b << 17) | (b >>> 15);
  B = (Math.imul(b, 9) + 0x52dce729) | 0;
}
