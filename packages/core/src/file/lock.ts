/**
 * The lock manager behind the engine's file lock.
 *
 * node-sqlite3-wasm's VFS locks a database file by creating the directory `<file>.lock` (any
 * lock level), answers SQLITE_BUSY when it exists, and removes it when the lock drops to NONE.
 * siblite loads the engine with a file-system object whose `mkdirSync`, `rmdirSync` and
 * `accessSync` for paths ending in `.lock` land here (see `load.ts`). The protocol (the proof
 * that it is safe under any schedule of pauses and kills is in docs/files-and-processes.md):
 *
 * - **The lock is the directory `<file>.lock`**, and it only ever appears or disappears by one
 *   `rename`: acquire prepares `<file>.lock-acq-*` with a complete owner record inside and
 *   renames it to `<file>.lock` (a rename onto a non-empty directory fails, so two acquirers
 *   cannot both succeed); release renames `<file>.lock` away to `<file>.lock-rel-*` first and
 *   deletes that afterwards. So `<file>.lock` never exists without its owner record.
 * - **Liveness is proven by the kernel**, never guessed from pids, hosts or clocks: before it
 *   touches the directory, a process binds a Unix socket in Linux's abstract namespace, named
 *   after the database file's device and inode (the *guard*), and keeps it until the directory
 *   is renamed away again. The kernel unbinds it when the process (or worker thread) dies. So
 *   while one holds the guard, no other live process of this network namespace can be holding
 *   the directory, and a directory whose owner record says "this machine (boot id), this
 *   network namespace, this guard" is provably stale: it is renamed aside (one step) and the
 *   lock taken. Anything else (no record, another host, boot or network namespace) is never
 *   broken: the error says who holds it and how to check.
 * - a waiting marker: a process refused with SQLITE_BUSY touches `<file>.lock-wait`; the holder
 *   notices it ({@link someoneWaiting}) and hands the lock back (see `access.ts`);
 * - a correct "reserved lock" answer: the VFS's xCheckReservedLock reports the lock directory,
 *   which the asking connection itself created; SQLite would then never see a hot journal and
 *   never roll back a transaction interrupted by a crash. Here it reports a lock only when it is
 *   held by someone other than this thread.
 * @module
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { threadId } from 'node:worker_threads';

/** The version of the owner record format this module writes and may break. */
export const LOCK_PROTOCOL = 2;

/** What `<file>.lock/owner` holds. */
export interface LockOwner {
  /** {@link LOCK_PROTOCOL} of the writer; records of other versions are never broken. */
  proto: number;
  /** Process id of the holder. */
  pid: number;
  /** Worker thread id of the holder (0: the main thread). */
  thread: number;
  /** `os.hostname()` of the holder. */
  host: string;
  /** `/proc/sys/kernel/random/boot_id` of the holder's machine, or null. */
  boot: string | null;
  /** The holder's network namespace (`readlink /proc/self/ns/net`), or null. */
  netns: string | null;
  /** The guard socket's name (without the leading NUL), or null where there is none. */
  guard: string | null;
  /** Unique per acquisition. */
  token: string;
  /** `Date.now()` at acquisition (for messages only: a clock is never proof of anything). */
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

/** A failure to take or drop a lock that is not "someone else holds it". */
export interface LockFailure {
  lockDir: string;
  /** The errno code (`ENOSPC`, `EACCES`, `EROFS`, `ENOTDIR`, ...) or `SIBLITE_*`. */
  code: string;
  /** Human-readable explanation naming the file and the cause. */
  detail: string;
}

/** Notified when this thread takes or drops a lock directory. */
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

const stats: LockStats = { acquired: 0, released: 0, busy: 0, staleBroken: 0, waitMarks: 0 };

interface Held {
  token: string;
  guard: net.Server | null;
  /** Held without a directory: a read-only user in a directory it cannot write (see {@link allowLocklessReads}). */
  lockless?: boolean;
}

/** Lock directories that read-only engines may "hold" without creating them. */
const locklessAllowed = new Set<string>();

/**
 * Lets a read-only engine read a database in a directory where it cannot create the lock
 * directory (EACCES, EPERM, EROFS): it then holds only the guard, which still excludes every
 * siblite writer of this machine and network namespace (they take the guard before writing).
 */
export function allowLocklessReads(lockDir: string): void {
  locklessAllowed.add(lockDir);
}

/** Locks this thread holds, by lock directory. */
const held = new Map<string, Held>();
/** Per lock directory: how often this thread acquired it (never reset). */
const acquisitions = new Map<string, number>();
/** Per lock directory: the wait marker's identity when this thread took the lock. */
const waitBaseline = new Map<string, string>();
/** Per lock directory: this thread touched the marker since it last held the lock. */
const waitedFor = new Set<string>();
/** Per lock directory: last time this thread touched the wait marker. */
const lastWaitMark = new Map<string, number>();
const lastBusy = new Map<string, BusyInfo>();
/** Refusals and failures in the current synchronous run of JavaScript (cleared by a microtask). */
const recentBusy = new Map<string, BusyInfo>();
const recentFailure = new Map<string, LockFailure>();
/** Lock directories whose leftovers this thread already swept. */
const swept = new Set<string>();
const listeners = new Map<string, Set<LockListener>>();

let seq = 0;

function readText(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

function readLink(p: string): string | null {
  try {
    return fs.readlinkSync(p);
  } catch {
    return null;
  }
}

/** This process's identity, as recorded in owner files. */
export const self = {
  pid: process.pid,
  thread: threadId,
  host: os.hostname(),
  boot: readText('/proc/sys/kernel/random/boot_id')?.trim() || null,
  netns: readLink('/proc/self/ns/net'),
};

// ---- test hooks: stop or kill this process at a named step ------------------------------------

/**
 * `SIBLITE_LOCK_TEST_STEP=<step>` with `SIBLITE_LOCK_TEST_ACTION=kill|stop` makes this process
 * SIGKILL or SIGSTOP itself the first time it reaches that step (tests of every crash and pause
 * point). Read once; costs one comparison per step otherwise.
 */
const testStep = process.env.SIBLITE_LOCK_TEST_STEP;
const testAction = process.env.SIBLITE_LOCK_TEST_ACTION ?? 'kill';
let testStepDone = false;

/** The named points of the protocol (see docs/files-and-processes.md). */
export type LockStep =
  | 'acquire:guarded'
  | 'acquire:prepared-empty'
  | 'acquire:prepared'
  | 'acquire:renamed'
  | 'break:judged'
  | 'break:renamed'
  | 'release:start'
  | 'release:renamed'
  | 'release:unguarded';

function step(name: LockStep): void {
  if (testStep !== name || testStepDone) return;
  testStepDone = true;
  process.kill(process.pid, testAction === 'stop' ? 'SIGSTOP' : 'SIGKILL');
}

// ---- the guard socket --------------------------------------------------------------------------

/** Whether abstract Unix sockets work here (Linux); probed once. */
let guardsWork: boolean | undefined;

function bindAbstract(name: string): net.Server | null {
  const server = net.createServer();
  server.on('error', () => {}); // EADDRINUSE arrives on the next tick; `listening` already says it
  try {
    // exclusive: bind here even in a cluster worker (never through the primary, which is async).
    server.listen({ path: `\0${name}`, exclusive: true });
  } catch {
    return null;
  }
  if (!server.listening) return null;
  server.unref();
  return server;
}

function guardsAvailable(): boolean {
  if (guardsWork === undefined) {
    const probe = process.platform === 'linux' ? bindAbstract(`siblite-probe-${process.pid}-${threadId}-${Math.random()}`) : null;
    guardsWork = probe !== null;
    probe?.close();
  }
  return guardsWork;
}

/**
 * The guard's name for a database file: its device and inode, so every name of the file (every
 * path, symlink, bind mount of one kernel) has the same guard. Null where guards do not work.
 */
export function guardName(dbFile: string): string | null {
  return guardOf(fileIdentity(dbFile));
}

function guardOf(id: fs.BigIntStats | undefined): string | null {
  // No file (it vanished): no guard, so nothing will be judged stale.
  return id === undefined || !guardsAvailable() ? null : `siblite-${id.dev}-${id.ino}`;
}

function fileIdentity(dbFile: string): fs.BigIntStats | undefined {
  try {
    return fs.statSync(dbFile, { bigint: true });
  } catch {
    return undefined;
  }
}

function dbFileOf(lockDir: string): string {
  return lockDir.slice(0, -'.lock'.length);
}

// ---- owner records ------------------------------------------------------------------------------

function ownerRecord(guard: string | null): LockOwner {
  return {
    proto: LOCK_PROTOCOL,
    ...self,
    guard,
    token: `${self.pid}.${self.thread}.${Date.now()}.${++seq}`,
    since: Date.now(),
  };
}

/** Reads and checks an owner record; null when missing, partial or malformed. */
export function readOwner(lockDir: string): LockOwner | null {
  const text = readText(`${lockDir}/${OWNER}`);
  if (!text) return null;
  try {
    const o = JSON.parse(text) as Partial<LockOwner> & Record<string, unknown>;
    if (typeof o.pid !== 'number' || typeof o.host !== 'string' || typeof o.token !== 'string') return null;
    const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
    return {
      proto: typeof o.proto === 'number' ? o.proto : 1,
      pid: o.pid,
      thread: typeof o.thread === 'number' ? o.thread : 0,
      host: o.host,
      boot: str(o.boot),
      netns: str(o.netns),
      guard: str(o.guard),
      token: o.token,
      since: typeof o.since === 'number' ? o.since : 0,
    };
  } catch {
    return null;
  }
}

/**
 * Whether a lock directory with this owner record is provably stale, for a caller that holds
 * the guard `guard` right now: the record was written by this protocol on this machine (same boot
 * id), in this network namespace, under this same guard. Its writer held that guard for as long
 * as it held the directory, and the guard is ours now, so the writer is gone. Anything else
 * (another host, boot, network namespace, guard, protocol, or no guard at all) is not proof.
 */
export function provablyStale(owner: LockOwner, guard: string | null): boolean {
  return (
    guard !== null &&
    owner.proto === LOCK_PROTOCOL &&
    owner.guard === guard &&
    owner.boot !== null &&
    owner.boot === self.boot &&
    owner.netns !== null &&
    owner.netns === self.netns
  );
}

function describe(lockDir: string, owner: LockOwner | null, guardBusy: boolean): string {
  const who = owner === null ? '' : `process ${owner.pid}${owner.thread ? ` (thread ${owner.thread})` : ''}`;
  if (guardBusy) {
    return (
      `lock directory "${lockDir}" is held (or being taken or freed) by a live process on this machine` +
      (owner ? `; its owner record names ${who} since ${new Date(owner.since).toISOString()}` : '') +
      ` (the guard socket @${owner?.guard ?? 'siblite-<dev>-<ino>'} is bound; \`ss -xlp | grep siblite\` shows which process)`
    );
  }
  if (owner === null) {
    return (
      `lock directory "${lockDir}" exists and has no owner record: it belongs to a process that does ` +
      `not use siblite's lock protocol (plain node-sqlite3-wasm, or an older siblite), so it is never removed ` +
      `automatically; if no process uses the file, remove that directory by hand`
    );
  }
  const sameMachine = owner.host === self.host && owner.boot === self.boot;
  const where =
    owner.proto !== LOCK_PROTOCOL
      ? `recorded by another version of siblite's lock protocol (${owner.proto})`
      : !sameMachine
        ? `on host ${owner.host} (boot id ${owner.boot ?? '?'}; this machine is ${self.host}, boot id ${self.boot ?? '?'})`
        : owner.netns !== self.netns
          ? `in another network namespace (${owner.netns ?? '?'}; this process is in ${self.netns ?? '?'}), such as another container`
          : `under another guard (${owner.guard ?? 'none'})`;
  return (
    `lock directory "${lockDir}" is held by ${who} ${where}, since ${new Date(owner.since).toISOString()}. ` +
    `siblite cannot prove from here whether that process is alive, so it never breaks this lock; ` +
    `if that process is gone (check there, e.g. \`ls -d /proc/${owner.pid}\`), remove the directory by hand`
  );
}

function notify(lockDir: string, what: 'acquired' | 'released'): void {
  const set = listeners.get(lockDir);
  if (set) for (const l of set) l[what](lockDir);
}

// ---- the waiting marker -------------------------------------------------------------------------

/** Identity of the wait marker: '' when absent. */
function markerId(lockDir: string): string {
  const st = fs.statSync(`${lockDir}-wait`, { throwIfNoEntry: false });
  return st ? `${st.ino}:${st.mtimeMs}` : '';
}

/** A waiter that has not asked again for this long is no longer counted as waiting (fairness only). */
export const WAITER_FRESH_MS = 300;
/** A waiter that stopped asking for this long starts a new wait (it gave up meanwhile). */
const WAIT_RESTART_MS = 1000;
/** Per lock directory: when this thread began to wait for it (first refusal), and last asked. */
const waiting = new Map<string, { since: number; last: number }>();
const myId = `${self.pid}.${self.thread}`;

interface Marker {
  id: string;
  since: number;
  fresh: boolean;
}

function readMarker(lockDir: string): Marker | null {
  const marker = `${lockDir}-wait`;
  const st = fs.statSync(marker, { throwIfNoEntry: false });
  if (!st) return null;
  // A claim is overwritten in place by one write (see writeClaim), so a read that overlaps it may
  // see a mix of two claims: read again.
  for (let attempt = 0; ; attempt++) {
    try {
      const o = JSON.parse(fs.readFileSync(marker, 'utf8')) as { id?: unknown; since?: unknown; at?: unknown };
      if (typeof o.id !== 'string' || typeof o.since !== 'number' || typeof o.at !== 'number') return null;
      return { id: o.id, since: o.since, fresh: Date.now() - o.at < WAITER_FRESH_MS };
    } catch {
      if (attempt >= 2) return null; // empty (an older siblite), or being rewritten all along
    }
  }
}

/** The length every claim is padded to: a claim never shrinks the file, so it is never truncated. */
const CLAIM_BYTES = 160;

/**
 * Writes this thread's claim into the marker with one `pwrite` at offset 0 of a fixed length,
 * without truncating: `writeFileSync` truncates first, and a reader between its truncation and
 * its write read an empty marker, took it for "nobody waits", and overwrote the oldest waiter's
 * claim (or took the free lock out of turn): 130 to 200 times in a 3 s run of 8 writer
 * processes. When the marker vanished meanwhile (a waiter got in), an empty one is left: it still
 * means "someone waits", which is true. Then touches the marker (a unique, sub-millisecond mtime: mtime granularity alone
 * could hide a change), which is what the holder watches.
 */
function writeClaim(marker: string, claim: { id: string; since: number; at: number } | null): void {
  const fd = fs.openSync(marker, fs.constants.O_WRONLY | fs.constants.O_CREAT, 0o666);
  try {
    if (claim !== null) fs.writeSync(fd, JSON.stringify(claim).padEnd(CLAIM_BYTES), 0, 'utf8');
    const t = (performance.timeOrigin + performance.now()) / 1000;
    fs.futimesSync(fd, t, t);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Leaves the waiting marker `<file>.lock-wait`: every refused waiter touches it (the holder hands
 * the lock back when its mtime changes), and it names the *oldest* waiter that is still asking,
 * which the others let go first (see {@link deferToOlderWaiter}). The claim is rewritten by a
 * waiter that is older than the one named, or when the named one has not renewed it for
 * {@link WAITER_FRESH_MS} (it got in, gave up, was paused or died): so the order is first come,
 * first served, and a paused or dead waiter costs the others that long once. This is fairness
 * only: safety never depends on it.
 */
export function markWaiting(lockDir: string): void {
  const now = Date.now();
  let w = waiting.get(lockDir);
  if (!w || now - w.last > WAIT_RESTART_MS) waiting.set(lockDir, (w = { since: now, last: now }));
  if ((lastWaitMark.get(lockDir) ?? -1) === now) return; // at most once per millisecond
  lastWaitMark.set(lockDir, now);
  w.last = now;
  const current = readMarker(lockDir);
  const marker = `${lockDir}-wait`;
  try {
    // Claim the turn unless someone older is still asking; either way ring the holder (the
    // marker's mtime, which the holder watches; the claim's freshness is its own `at`).
    const claim = !current || !current.fresh || current.id === myId || current.since > w.since;
    writeClaim(marker, claim ? { id: myId, since: w.since, at: now } : null);
    waitedFor.add(lockDir);
    stats.waitMarks++;
  } catch {
    // best effort: a read-only directory, for instance
  }
}

/**
 * True when another waiter that began to wait before this thread is still asking: then this
 * thread lets it take the free lock first.
 */
function deferToOlderWaiter(lockDir: string): boolean {
  const m = readMarker(lockDir);
  if (!m || !m.fresh || m.id === myId) return false;
  return m.since < (waiting.get(lockDir)?.since ?? Date.now());
}

/** True while the wait marker exists (a waiter removes it when it gets the lock). */
export function waitMarkerExists(lockDir: string): boolean {
  return fs.statSync(`${lockDir}-wait`, { throwIfNoEntry: false }) !== undefined;
}

/** True when some process (this one included) asked for the lock after this thread took it. */
export function someoneWaiting(lockDir: string): boolean {
  return held.has(lockDir) && markerId(lockDir) !== (waitBaseline.get(lockDir) ?? '');
}

// ---- acquire, break, release --------------------------------------------------------------------

function errnoError(code: string, message: string): NodeJS.ErrnoException {
  const e = new Error(`${code}: ${message}`) as NodeJS.ErrnoException;
  e.code = code;
  return e;
}

function remember(map: Map<string, unknown>, lockDir: string, value: unknown): void {
  if (recentBusy.size === 0 && recentFailure.size === 0) {
    queueMicrotask(() => {
      recentBusy.clear();
      recentFailure.clear();
    });
  }
  map.set(lockDir, value);
}

function refuse(lockDir: string, owner: LockOwner | null, guardBusy: boolean, why?: string): never {
  stats.busy++;
  const info = { lockDir, owner, detail: why ? `lock directory "${lockDir}" is free, ${why}` : describe(lockDir, owner, guardBusy) };
  lastBusy.set(lockDir, info);
  remember(recentBusy, lockDir, info);
  markWaiting(lockDir);
  throw errnoError('EEXIST', `lock held, ${lockDir}`);
}

/** Records an I/O failure of the lock (for the error message) and throws it to the VFS. */
function fail(lockDir: string, e: unknown, doing: string): never {
  const err = e as NodeJS.ErrnoException;
  const code = typeof err?.code === 'string' ? err.code : 'EIO';
  const file = dbFileOf(lockDir);
  const detail = `cannot ${doing} the lock of "${file}" (directory "${lockDir}"): ${err?.message ?? String(e)}${hint(code)}`;
  remember(recentFailure, lockDir, { lockDir, code, detail });
  throw err instanceof Error ? err : errnoError(code, detail);
}

function hint(code: string): string {
  switch (code) {
    case 'ENOSPC':
    case 'EDQUOT':
      return ' (the file system is full: free space, then retry)';
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return ' (the directory is not writable: open the database with readonly: true, or fix the permissions)';
    default:
      return '';
  }
}

function removeTree(p: string): void {
  try {
    fs.rmSync(p, { recursive: true, force: true });
  } catch {
    // best effort: a leftover named *.lock-rel-* / *.lock-stale-* / *.lock-acq-* holds no lock
  }
}

/**
 * Removes leftovers of crashed acquires, releases and breaks (directories named
 * `<file>.lock-{acq,rel,stale}-*`). Called while holding the guard: an `-acq-` directory written
 * in this network namespace under this guard belongs to a dead process.
 */
function sweep(lockDir: string, guard: string | null): void {
  if (swept.has(lockDir)) return;
  swept.add(lockDir);
  const dir = path.dirname(lockDir);
  const prefix = `${path.basename(lockDir)}-`;
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const kind = name.slice(prefix.length, prefix.length + 4);
    const full = path.join(dir, name);
    if (kind === 'rel-' || kind === 'stal') removeTree(full);
    else if (kind === 'acq-') {
      const o = readOwner(full);
      if (o === null || provablyStale(o, guard)) removeTree(full);
    }
  }
}

/** Makes the next acquire of this lock directory look for crash leftovers (once per open). */
export function sweepNextTime(lockDir: string): void {
  swept.delete(lockDir);
}

/**
 * Takes the lock directory (the VFS's `mkdirSync`). Throws an EEXIST error when the lock is
 * held (the VFS then answers SQLITE_BUSY), any other error on I/O failure.
 */
export function acquire(lockDir: string): void {
  // Another engine connection of this thread holds it: busy, as the engine expects.
  if (held.has(lockDir)) refuse(lockDir, readOwner(lockDir), false);
  const existing = fs.lstatSync(lockDir, { throwIfNoEntry: false });
  if (existing && !existing.isDirectory()) {
    fail(
      lockDir,
      errnoError(
        'ENOTDIR',
        `"${lockDir}" is not a directory but the engine locks "${dbFileOf(lockDir)}" by creating a directory of that name ` +
          `(is it another database? a database must not be named like another one's lock, <name>.lock); rename or move one of them`,
      ),
      'take',
    );
  }
  const id = fileIdentity(dbFileOf(lockDir));
  if (id !== undefined && id.nlink > 1n) {
    // A hard link made after open(): another name would have another journal (see database.ts).
    fail(lockDir, errnoError('EMLINK', `"${dbFileOf(lockDir)}" has ${id.nlink} hard links (names); remove the others`), 'take');
  }
  const guardId = guardOf(id);
  // First without the guard: a lock that cannot be broken, or a turn that is someone else's, is
  // refused without taking the guard, so that waiters do not keep the guard from each other.
  if (fs.lstatSync(lockDir, { throwIfNoEntry: false })) {
    const owner = readOwner(lockDir);
    if (owner === null || !provablyStale(owner, guardId)) refuse(lockDir, owner, false);
  } else if (deferToOlderWaiter(lockDir)) {
    refuse(lockDir, null, false, 'deferring to a process that has waited longer');
  }
  let guard: net.Server | null = null;
  if (guardId !== null) {
    guard = bindAbstract(guardId);
    if (guard === null) refuse(lockDir, readOwner(lockDir), true);
    step('acquire:guarded');
  }
  try {
    sweep(lockDir, guardId);
    for (let attempt = 0; ; attempt++) {
      const owner = fs.lstatSync(lockDir, { throwIfNoEntry: false }) ? readOwner(lockDir) : undefined;
      if (owner !== undefined) {
        // It exists. Break it only on proof that its owner is gone; else it is busy.
        if (attempt > 0 || owner === null || !provablyStale(owner, guardId)) refuse(lockDir, owner, false);
        breakStale(lockDir);
        sweep(lockDir, guardId);
        continue;
      }
      const record = ownerRecord(guardId);
      let installed: boolean;
      try {
        installed = install(lockDir, record);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code ?? '';
        if (!locklessAllowed.has(lockDir) || !['EACCES', 'EPERM', 'EROFS'].includes(code)) throw e;
        recentFailure.delete(lockDir);
        held.set(lockDir, { token: record.token, guard, lockless: true });
        guard = null;
        break;
      }
      if (installed) {
        step('acquire:renamed');
        held.set(lockDir, { token: record.token, guard });
        guard = null; // kept until release
        break;
      }
      // Someone outside this guard (another network namespace or host, or a plain engine) took it.
      refuse(lockDir, readOwner(lockDir), false);
    }
  } finally {
    guard?.close();
  }
  removeColdJournal(dbFileOf(lockDir));
  acquisitions.set(lockDir, (acquisitions.get(lockDir) ?? 0) + 1);
  stats.acquired++;
  lastBusy.delete(lockDir);
  waiting.delete(lockDir);
  waitedFor.delete(lockDir);
  const m = readMarker(lockDir);
  if (m === null ? waitMarkerExists(lockDir) : m.id === myId || !m.fresh) {
    // Our claim is granted, or the claim is stale (its waiter stopped asking) or unreadable:
    // clear it, so that the marker means "someone waits now". Live waiters write it again.
    try {
      fs.unlinkSync(`${lockDir}-wait`);
    } catch {
      // ignore
    }
  }
  waitBaseline.set(lockDir, markerId(lockDir));
  notify(lockDir, 'acquired');
}

const JOURNAL_HEADER = 28;

/**
 * Deletes `<file>-journal` when its header is zeroed: a journal SQLite finished with (in
 * exclusive locking it zeroes the header instead of deleting the file) whose process died
 * before deleting it. It is not hot, so SQLite would leave it forever. Called right after
 * taking the lock: only the lock holder writes the journal, and SQLite has not opened it yet.
 */
function removeColdJournal(dbFile: string): void {
  const journal = `${dbFile}-journal`;
  if (!fs.existsSync(journal)) return;
  let fd: number | undefined;
  try {
    fd = fs.openSync(journal, 'r');
    const head = Buffer.alloc(JOURNAL_HEADER);
    const n = fs.readSync(fd, head, 0, JOURNAL_HEADER, 0);
    if (n === JOURNAL_HEADER && head.every((b) => b === 0)) fs.unlinkSync(journal);
  } catch {
    // no journal (the usual case), or not ours to delete: SQLite decides
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * Prepares `<file>.lock-acq-*` with the owner record and renames it to the lock directory.
 * Returns false when the lock directory appeared meanwhile (the rename found it non-empty).
 */
function install(lockDir: string, record: LockOwner): boolean {
  const temp = `${lockDir}-acq-${record.token}`;
  try {
    fs.mkdirSync(temp);
    step('acquire:prepared-empty');
    fs.writeFileSync(`${temp}/${OWNER}`, JSON.stringify(record));
    step('acquire:prepared');
  } catch (e) {
    removeTree(temp);
    // Swept away by a process that could not tell it from a crash leftover: just busy.
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    fail(lockDir, e, 'take');
  }
  try {
    // One step: the lock appears with its owner record, or not at all. (An existing *empty*
    // directory would be replaced: only a plain engine creates one, and it was checked just now.)
    fs.renameSync(temp, lockDir);
    return true;
  } catch (e) {
    removeTree(temp);
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOENT') return false;
    fail(lockDir, e, 'take');
  }
}

/** Removes a provably stale lock directory (the caller holds the guard): one rename aside. */
function breakStale(lockDir: string): void {
  step('break:judged');
  const aside = `${lockDir}-stale-${self.pid}-${self.thread}-${++seq}`;
  try {
    fs.renameSync(lockDir, aside);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    fail(lockDir, e, 'break the stale');
  }
  step('break:renamed');
  removeTree(aside);
  stats.staleBroken++;
  swept.delete(lockDir); // a dead owner may have left more: look again (still under the guard)
}

/** Drops the lock directory (the VFS's `rmdirSync`). */
export function release(lockDir: string): void {
  const h = held.get(lockDir);
  if (!h) {
    fs.rmdirSync(lockDir); // not ours: behave exactly as the engine expects
    return;
  }
  if (h.lockless) {
    held.delete(lockDir);
    stats.released++;
    h.guard?.close();
    notify(lockDir, 'released');
    return;
  }
  step('release:start');
  const aside = `${lockDir}-rel-${h.token}`;
  try {
    fs.renameSync(lockDir, aside); // one step: the lock is gone
  } catch (e) {
    // Still held (e.g. EACCES): keep the guard; the engine reports SQLITE_IOERR_UNLOCK.
    fail(lockDir, e, 'release');
  }
  held.delete(lockDir);
  stats.released++;
  step('release:renamed');
  h.guard?.close();
  step('release:unguarded');
  removeTree(aside);
  notify(lockDir, 'released');
}

/**
 * The VFS's xCheckReservedLock (`accessSync(<file>.lock)`): throws (meaning "no reserved lock")
 * when the directory is absent or this thread holds it; returns when someone else holds it.
 */
export function checkReserved(lockDir: string, mode?: number): void {
  if (held.has(lockDir)) throw errnoError('ENOENT', `held by this process, ${lockDir}`);
  fs.accessSync(lockDir, mode);
}

/** True when this thread holds the lock directory. */
export function isHeld(lockDir: string): boolean {
  return held.has(lockDir);
}

/** How often this thread took the lock directory. */
export function acquisitionCount(lockDir: string): number {
  return acquisitions.get(lockDir) ?? 0;
}

/** Why the last attempt of this thread to take the lock failed; undefined once it succeeded. */
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

/** An I/O failure of this lock in the current synchronous run of JavaScript, if any. */
export function recentLockFailure(lockDir: string): LockFailure | undefined {
  return recentFailure.get(lockDir);
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

/** How often this thread was refused a lock (cheap; for per-statement bookkeeping). */
export function busyCount(): number {
  return stats.busy;
}

/** A copy of this thread's lock counters. */
export function lockStats(): LockStats {
  return { ...stats };
}

/** The lock directory the engine uses for a database file (absolute path + `.lock`). */
export function lockDirOf(absoluteFile: string): string {
  return `${absoluteFile}.lock`;
}
