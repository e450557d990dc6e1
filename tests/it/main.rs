//! The cross-process tests of the ipc crates, one module per subject, in one test binary
//! (one link of tokio, lapin and the harness instead of one per file): `cargo test -p
//! ipc-tests --test it MODULE::` runs one module, e.g. `queue_processes::`.

mod amqp_blocked;
mod amqp_interop;
mod amqp_processes;
mod amqp_runtime;
mod amqp_semantics;
mod amqp_tls;
mod frames;
mod harness;
mod js_client;
mod python_decoder;
mod queue_conformance;
mod queue_corruption;
mod queue_damage_processes;
mod queue_disk_full;
mod queue_group_commit;
mod queue_pipelined;
mod queue_processes;
mod queue_semantics;
mod queue_support;
mod shm_bench;
mod shm_channel;
mod shm_crash;
mod shm_shrink;
mod shm_state;
mod socket_bad_input;
mod socket_bench;
mod socket_chat;
mod socket_limits;
mod socket_restart;
mod socket_tls;
mod socket_ws;
mod socket_wss;
mod web_chat;
