//! The behavior suite on the memory driver, the reference.

mp_storage::behavior_suite!(mp_storage_tests::targets::memory());

/// The bank in one process (the memory store is not shared between processes): 8 tasks over 16
/// accounts for 1.5 s; money conserved, no balance negative, each transfer in both ledgers once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_transfers_conserve_money() {
    mp_storage_tests::bank::in_process("memory://", "mem-bank", 16, 8, 1.5).await;
}
