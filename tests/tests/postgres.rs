//! The PostgreSQL driver: the behavior suite, and what only a SQL server shows.
mp_storage::behavior_suite!(mp_storage_tests::targets::postgres());
