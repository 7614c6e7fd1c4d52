#!/usr/bin/python3
"""failfs: a pass-through FUSE file system over BACKING, mounted on MOUNT, that fails on
demand with a real EIO, for the storage-fault tests (tests/faults.rs).

Usage: failfs.py BACKING MOUNT CONTROL

CONTROL is a file outside the mount holding the faults in force, one word each (re-read when
it changes): `write` (write(2) fails), `fsync` (fsync and fdatasync fail after the write
succeeded), `create` (creating a file fails). Empty: everything passes through. The kernel
sees real EIO answers from a real file system: nothing in vigil is told it is a test.
"""
import errno, os, sys

import fusepy
from fusepy import FUSE, FuseOSError, Operations


class FailFs(Operations):
    def __init__(self, backing, control):
        self.root = backing
        self.control = control
        self.seen = None
        self.faults = set()

    def _faults(self):
        try:
            st = os.stat(self.control)
            key = (st.st_mtime_ns, st.st_size)
            if key != self.seen:
                self.seen = key
                with open(self.control) as f:
                    self.faults = set(f.read().split())
        except OSError:
            self.faults = set()
        return self.faults

    def _fail(self, what):
        if what in self._faults():
            raise FuseOSError(errno.EIO)

    def _p(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def access(self, path, mode):
        if not os.access(self._p(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        os.chmod(self._p(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._p(path), uid, gid)

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._p(path))
        except OSError as e:
            raise FuseOSError(e.errno)
        return {k: getattr(st, k) for k in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid")}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._p(path))

    def readlink(self, path):
        return os.readlink(self._p(path))

    def mknod(self, path, mode, dev):
        return os.mknod(self._p(path), mode, dev)

    def rmdir(self, path):
        os.rmdir(self._p(path))

    def mkdir(self, path, mode):
        os.mkdir(self._p(path), mode)

    def statfs(self, path):
        st = os.statvfs(self._p(path))
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    def unlink(self, path):
        os.unlink(self._p(path))

    def symlink(self, name, target):
        return os.symlink(target, self._p(name))

    def rename(self, old, new):
        os.rename(self._p(old), self._p(new))

    def link(self, target, name):
        return os.link(self._p(name), self._p(target))

    def utimens(self, path, times=None):
        os.utime(self._p(path), times)

    def open(self, path, flags):
        try:
            return os.open(self._p(path), flags)
        except OSError as e:
            raise FuseOSError(e.errno)

    def create(self, path, mode, fi=None):
        self._fail("create")
        return os.open(self._p(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path, length, offset, fh):
        return os.pread(fh, length, offset)

    def write(self, path, buf, offset, fh):
        self._fail("write")
        return os.pwrite(fh, buf, offset)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            with open(self._p(path), "r+b") as f:
                f.truncate(length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return os.close(fh)

    def fsync(self, path, datasync, fh):
        self._fail("fsync")
        return os.fdatasync(fh) if datasync else os.fsync(fh)


def main():
    backing, mount, control = sys.argv[1:4]
    # direct_io: every write reaches this process (and can fail) when it is made, as on a
    # disk that answers EIO, instead of being absorbed by the page cache.
    FUSE(FailFs(backing, control), mount, foreground=True, nothreads=True, direct_io=True)


if __name__ == "__main__":
    main()
