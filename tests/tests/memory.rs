//! The behavior suite on the memory driver, the reference.

mp_storage_tests::behavior_suite!(mp_storage_tests::targets::memory());
