//! The SQLite driver: the behavior suite, several processes on one database, writers killed
//! with SIGKILL, group commit, rows corrupted by hand, locks held by another process, sweeps.

mp_storage::behavior_suite!(mp_storage_tests::targets::sqlite());
