//! The behavior suite on the memory driver, the reference.

mp_storage::behavior_suite!(mp_storage_tests::targets::memory());
