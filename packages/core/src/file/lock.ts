/**
 * The lock manager behind the engine's file lock.
 *
 * node-sqlite3-wasm's VFS locks a database file by creating the directory `<file>.lock` (any
 * lock level), answers SQLITE_BUSY when it exists, and removes it when the lock drops to NONE.
 * siblite loads the engine with a file-system object whose `mkdirSync`, `rmdirSync` and
 * `accessSync` for paths ending in `.lock` land here (see `load.ts`), which adds:
 *
 * - an owner record (`<file>.lock/owner`: pid, host, process start time, boot id, pid
 *   namespace) written right after the directory is created, and removed before it;
 * - stale-lock breaking: when the directory exists and its recorded owner is provably gone
 *   (same host, boot and pid namespace; pid not alive, a zombie, or a different process start
 *   time), the lock is removed under a short-lived mutex `<file>.lock-break` after re-reading the
 *   record. A lock without a readable owner record is never broken, and neither is the lock of a
 *   live process or of another host;
 * - a waiting marker: a process refused with SQLITE_BUSY touches `<file>.lock-wait`; the holder
 *   notices it ({@link someoneWaiting}) and hands the lock back (see `access.ts`);
 * - a correct "reserved lock" answer: the VFS's xCheckReservedLock reports the lock directory,
 *   which the asking connection itself created; SQLite would then never see a hot journal and
 *   never roll back a transaction interrupted by a crash. Here it reports a lock only when it is
 *   held by someone other than this process.
 * @module
 */
import fs from 'node:fs';
import os from 'node:os';

/** What `<file>.lock/owner` holds. */
export interface LockOwner {
  /** Process id of the holder. */
  pid: number;
  /** `os.hostname()` of the holder. */
  host: string;
  /** Start time of the holder process (clock ticks since boot, `/proc/<pid>/stat` field 22), or null where unknown. */
  start: string | null;
  /** `/proc/sys/kernel/random/boot_id` of the holder's machine, or null. */
  boot: string | null;
  /** The holder's pid namespace (`readlink /proc/self/ns/pid`), or null. */
  pidns: string | null;
  /** Unique per acquisition. */
  token: string;
  /** `Date.now()` at acquisition. */
  since: number;
}

/** Why the last attempt to take a lock failed, for error messages. */
export interface BusyInfo {
  /** The lock directory. */
  lockDir: string;
  /** The recorded owner, or null when the directory holds no readable owner record. */
  owner: LockOwner | null;
  /** Human-readable explanation naming the lock directory. */
  detail: string;
}

/** Notified when this process takes or drops a lock directory. */
export interface LockListener {
  acquired(lockDir: string): void;
  released(lockDir: string): void;
}

/** Counters, for tests and diagnostics. */
export interface LockStats {
  acquired: number;
  released: number;
  busy: number;
  staleBroken: number;
  waitMarks: number;
}

const OWNER = 'owner';
/** A `<file>.lock-break` mutex older than this is considered abandoned. */
export const BREAK_MUTEX_STALE_MS = 5000;

const stats: LockStats = { acquired: 0, released: 0, busy: 0, staleBroken: 0, waitMarks: 0 };

interface Held {
  token: string;
}

/** Locks this process holds, by lock directory. */
const held = new Map<string, Held>();
/** Per lock directory: how often this process acquired it (never reset). */
const acquisitions = new Map<string, number>();
/** Per lock directory: the wait marker's identity when this process took the lock. */
const waitBaseline = new Map<string, string>();
/** Per lock directory: this process touched the marker since it last held the lock. */
const waitedFor = new Set<string>();
/** Per lock directory: last time this process touched the wait marker. */
const lastWaitMark = new Map<string, number>();
const lastBusy = new Map<string, BusyInfo>();
/** Refusals in the current synchronous run of JavaScript (cleared by a microtask). */
const recentBusy = new Map<string, BusyInfo>();
const listeners = new Map<string, Set<LockListener>>();

let seq = 0;

function readText(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** Start time and state of a process from `/proc/<pid>/stat`, or null when unreadable. */
function procStat(pid: number | 'self'): { start: string; state: string } | null {
  const text = readText(`/proc/${pid}/stat`);
  if (text === null) return null;
  // The command name (field 2) may contain spaces and parentheses: fields after the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); field 22 (starttime) is rest[19].
  const start = rest[19];
  const state = rest[0];
  return start === undefined || state === undefined ? null : { start, state };
}

function readPidNs(pid: number | 'self'): string | null {
  try {
    return fs.readlinkSync(`/proc/${pid}/ns/pid`);
  } catch {
    return null;
  }
}

/** This process's identity, as recorded in owner files. */
export const self = {
  pid: process.pid,
  host: os.hostname(),
  start: procStat('self')?.start ?? null,
  boot: readText('/proc/sys/kernel/random/boot_id')?.trim() || null,
  pidns: readPidNs('self'),
};

function ownerRecord(): LockOwner {
  return { ...self, token: `${self.pid}.${self.start ?? 'x'}.${++seq}`, since: Date.now() };
}

/** Reads and checks an owner record; null when missing, partial or malformed. */
export function readOwner(lockDir: string): LockOwner | null {
  const text = readText(`${lockDir}/${OWNER}`);
  if (!text) return null;
  try {
    const o = JSON.parse(text) as Partial<LockOwner>;
    if (typeof o.pid !== 'number' || typeof o.host !== 'string' || typeof o.token !== 'string') return null;
    return {
      pid: o.pid,
      host: o.host,
      start: typeof o.start === 'string' ? o.start : null,
      boot: typeof o.boot === 'string' ? o.boot : null,
      pidns: typeof o.pidns === 'string' ? o.pidns : null,
      token: o.token,
      since: typeof o.since === 'number' ? o.since : 0,
    };
  } catch {
    return null;
  }
}

/**
 * True only when the recorded owner is provably gone: same host and pid namespace, and either
 * the machine rebooted since, or the pid is not alive, or it is a zombie, or it is a different
 * process (start time differs: the pid was reused). Anything uncertain counts as alive.
 */
export function ownerIsGone(owner: LockOwner): boolean {
  if (owner.host !== self.host) return false;
  if (owner.boot !== null && self.boot !== null && owner.boot !== self.boot) return true;
  if (owner.pidns !== self.pidns) return false;
  if (owner.pid === self.pid) {
    // Our own pid: alive unless the record comes from an earlier process with this pid.
    return owner.start !== null && self.start !== null && owner.start !== self.start;
  }
  try {
    process.kill(owner.pid, 0);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ESRCH') return true;
    if (code !== 'EPERM') return false; // EPERM: it exists, under another user
  }
  const st = procStat(owner.pid);
  if (st === null) return self.start !== null && !fs.existsSync(`/proc/${owner.pid}`); // vanished meanwhile
  if (st.state === 'Z' || st.state === 'X') return true; // killed, not yet reaped by its parent
  return owner.start !== null && st.start !== owner.start;
}

function describe(lockDir: string, owner: LockOwner | null): string {
  if (owner === null) {
    return (
      `lock directory "${lockDir}" exists and has no owner record: it belongs to a process that does ` +
      `not record owners (or is being created right now), so it is never removed automatically; ` +
      `if no process uses the file, remove that directory by hand`
    );
  }
  const where = owner.host === self.host ? '' : ` on host ${owner.host}`;
  return `lock directory "${lockDir}" is held by process ${owner.pid}${where} (since ${new Date(owner.since).toISOString()})`;
}

function notify(lockDir: string, what: 'acquired' | 'released'): void {
  const set = listeners.get(lockDir);
  if (set) for (const l of set) l[what](lockDir);
}

/** Identity of the wait marker: '' when absent. */
function markerId(lockDir: string): string {
  const st = fs.statSync(`${lockDir}-wait`, { throwIfNoEntry: false });
  return st ? `${st.ino}:${st.mtimeMs}` : '';
}

/** Leaves the waiting marker `<file>.lock-wait` (a process wants the lock). */
export function markWaiting(lockDir: string): void {
  const now = Date.now();
  if ((lastWaitMark.get(lockDir) ?? -1) === now) return; // at most once per millisecond
  lastWaitMark.set(lockDir, now);
  const marker = `${lockDir}-wait`;
  // A unique, sub-millisecond time: mtime granularity alone could hide a touch.
  const t = (performance.timeOrigin + performance.now()) / 1000;
  try {
    try {
      fs.utimesSync(marker, t, t);
    } catch {
      fs.writeFileSync(marker, '');
      fs.utimesSync(marker, t, t);
    }
    waitedFor.add(lockDir);
    stats.waitMarks++;
  } catch {
    // best effort: a read-only directory, for instance
  }
}

/** True while the wait marker exists (a waiter removes it when it gets the lock). */
export function waitMarkerExists(lockDir: string): boolean {
  return fs.statSync(`${lockDir}-wait`, { throwIfNoEntry: false }) !== undefined;
}

/** True when some process (this one included) asked for the lock after this process took it. */
export function someoneWaiting(lockDir: string): boolean {
  return held.has(lockDir) && markerId(lockDir) !== (waitBaseline.get(lockDir) ?? '');
}

/**
 * Breaks the lock when its recorded owner is provably gone. Returns true when the lock
 * directory was removed.
 */
function breakIfStale(lockDir: string, owner: LockOwner): boolean {
  if (!ownerIsGone(owner)) return false;
  const mutex = `${lockDir}-break`;
  try {
    fs.mkdirSync(mutex);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') return false;
    // Another process is breaking it right now, or a breaker died holding the mutex.
    const st = fs.statSync(mutex, { throwIfNoEntry: false });
    if (!st || Date.now() - st.mtimeMs < BREAK_MUTEX_STALE_MS) return false;
    try {
      fs.rmdirSync(mutex);
      fs.mkdirSync(mutex);
    } catch {
      return false;
    }
  }
  try {
    // Re-read under the mutex: only the very record judged dead may be removed.
    const again = readOwner(lockDir);
    if (again === null || again.token !== owner.token) return false;
    const aside = `${lockDir}-stale-${self.pid}-${++seq}`;
    try {
      fs.renameSync(lockDir, aside); // atomic: the lock is gone in one step
    } catch {
      return false;
    }
    fs.rmSync(aside, { recursive: true, force: true });
    stats.staleBroken++;
    return true;
  } catch {
    return false;
  } finally {
    try {
      fs.rmdirSync(mutex);
    } catch {
      // ignore
    }
  }
}

function refuse(lockDir: string, error: NodeJS.ErrnoException, owner: LockOwner | null): never {
  stats.busy++;
  const info = { lockDir, owner, detail: describe(lockDir, owner) };
  lastBusy.set(lockDir, info);
  if (recentBusy.size === 0) queueMicrotask(() => recentBusy.clear());
  recentBusy.set(lockDir, info);
  markWaiting(lockDir);
  throw error;
}

/**
 * Takes the lock directory (the VFS's `mkdirSync`). Throws an EEXIST error when the lock is
 * held (the VFS then answers SQLITE_BUSY), any other error on I/O failure.
 */
export function acquire(lockDir: string): void {
  try {
    fs.mkdirSync(lockDir);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code !== 'EEXIST') throw err;
    const owner = readOwner(lockDir);
    if (owner === null || !breakIfStale(lockDir, owner)) refuse(lockDir, err, owner);
    try {
      fs.mkdirSync(lockDir);
    } catch (e2) {
      const err2 = e2 as NodeJS.ErrnoException;
      if (err2.code !== 'EEXIST') throw err2;
      refuse(lockDir, err2, readOwner(lockDir));
    }
  }
  const record = ownerRecord();
  try {
    fs.writeFileSync(`${lockDir}/${OWNER}`, JSON.stringify(record));
  } catch (e) {
    try {
      fs.rmdirSync(lockDir);
    } catch {
      // ignore
    }
    throw e;
  }
  held.set(lockDir, { token: record.token });
  acquisitions.set(lockDir, (acquisitions.get(lockDir) ?? 0) + 1);
  stats.acquired++;
  lastBusy.delete(lockDir);
  if (waitedFor.delete(lockDir)) {
    // We were waiting and got in: our wish is granted, clear the marker.
    try {
      fs.unlinkSync(`${lockDir}-wait`);
    } catch {
      // ignore
    }
  }
  waitBaseline.set(lockDir, markerId(lockDir));
  notify(lockDir, 'acquired');
}

/** Drops the lock directory (the VFS's `rmdirSync`). */
export function release(lockDir: string): void {
  if (!held.has(lockDir)) {
    fs.rmdirSync(lockDir); // not ours: behave exactly as the engine expects
    return;
  }
  held.delete(lockDir);
  stats.released++;
  try {
    fs.unlinkSync(`${lockDir}/${OWNER}`);
  } catch {
    // ignore: a missing record is fine
  }
  try {
    fs.rmdirSync(lockDir);
  } finally {
    notify(lockDir, 'released');
  }
}

/**
 * The VFS's xCheckReservedLock (`accessSync(<file>.lock)`): throws (meaning "no reserved lock")
 * when the directory is absent or this process holds it; returns when another process holds it.
 */
export function checkReserved(lockDir: string, mode?: number): void {
  if (held.has(lockDir)) {
    const e = new Error(`ENOENT: held by this process, ${lockDir}`) as NodeJS.ErrnoException;
    e.code = 'ENOENT';
    throw e;
  }
  fs.accessSync(lockDir, mode);
}

/** True when this process holds the lock directory. */
export function isHeld(lockDir: string): boolean {
  return held.has(lockDir);
}

/** How often this process took the lock directory. */
export function acquisitionCount(lockDir: string): number {
  return acquisitions.get(lockDir) ?? 0;
}

/** Why the last attempt of this process to take the lock failed; undefined once it succeeded. */
export function lastBusyInfo(lockDir: string): BusyInfo | undefined {
  return lastBusy.get(lockDir);
}

/**
 * The refusal of this lock directory that happened in the current synchronous run of JavaScript,
 * if any: an engine error "database is locked" caught in the same run came from it.
 */
export function recentBusyInfo(lockDir: string): BusyInfo | undefined {
  return recentBusy.get(lockDir);
}

/** Subscribes to acquisitions and releases of one lock directory; returns the unsubscribe function. */
export function watchLock(lockDir: string, listener: LockListener): () => void {
  let set = listeners.get(lockDir);
  if (!set) listeners.set(lockDir, (set = new Set()));
  set.add(listener);
  return () => {
    set.delete(listener);
    if (set.size === 0) listeners.delete(lockDir);
  };
}

/** How often this process was refused a lock (cheap; for per-statement bookkeeping). */
export function busyCount(): number {
  return stats.busy;
}

/** A copy of this process's lock counters. */
export function lockStats(): LockStats {
  return { ...stats };
}

/** The lock directory the engine uses for a database file (absolute path + `.lock`). */
export function lockDirOf(absoluteFile: string): string {
  return `${absoluteFile}.lock`;
}
