"""The process group: ranks, their environment, the launcher, the watch on peers, the device."""
