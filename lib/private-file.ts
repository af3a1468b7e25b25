import { chmodSync, closeSync, constants, fstatSync, fchmodSync, lstatSync, openSync } from "node:fs";

/**
 * Modes and open flags for everything a daemon keeps on disk (security.md "State on disk"):
 * directories 0700, files 0600, and no open that follows a symlink planted at our file's name.
 * The modes given to open/mkdir are only ever narrowed by the umask, so they hold under any umask.
 */
export const PRIVATE_DIR_MODE = 0o700;
export const PRIVATE_FILE_MODE = 0o600;

/** A new temp file: must not exist (O_EXCL), and is never a symlink's target (O_NOFOLLOW). */
export const CREATE_EXCLUSIVE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
/** Append-only, created if missing ("a" without following a symlink at the name). */
export const APPEND_NOFOLLOW = constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND | constants.O_NOFOLLOW;
/** Read-write on an existing file ("r+" without following a symlink at the name). */
export const READ_WRITE_NOFOLLOW = constants.O_RDWR | constants.O_NOFOLLOW;
/** Created or truncated ("w" without following a symlink at the name). */
export const TRUNCATE_NOFOLLOW = constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW;

/**
 * Makes `path` exist as a regular file of mode 0600 (created if missing, narrowed if an earlier
 * version left it 0644), without following a symlink at its name. For files another library
 * creates with its own mode: SQLite creates a database 0644 whatever the umask, and gives its
 * -wal and -shm the database file's mode, so a database that exists 0600 before SQLite opens it
 * keeps all three private.
 */
export function ensurePrivateFile(path: string): void {
  const fd = openSync(path, constants.O_RDONLY | constants.O_CREAT | constants.O_NOFOLLOW, PRIVATE_FILE_MODE);
  try {
    if ((fstatSync(fd).mode & 0o077) !== 0) fchmodSync(fd, PRIVATE_FILE_MODE);
  } finally {
    closeSync(fd);
  }
}

/** Narrows an existing file to 0600 (not a symlink's target); a missing file is left missing. */
export function tightenIfPresent(path: string): void {
  try {
    const st = lstatSync(path);
    if (st.isFile() && (st.mode & 0o077) !== 0) chmodSync(path, PRIVATE_FILE_MODE);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
}
