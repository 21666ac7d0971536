//! Broker failures on a three-broker cluster shaped like the Open Bank stack's
//! (replication 3, `min.insync.replicas=2`, no auto-create), under load: one broker
//! SIGKILLed and started again ten seconds later, then another stopped with SIGTERM
//! (a controlled shutdown) and started again. The partitions it led get new leaders,
//! the group may get a new coordinator; afterwards, as in `faults`, nothing is lost,
//! nothing applied twice, one kind of answer per command, each account's events in
//! order. How long answers pause is the benchmark's to report (`dev/bench
//! --disruptions`), not a test's.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::harness::*;
use crate::invariants::*;

/// How long a broker stays away.
const AWAY: Duration = Duration::from_secs(10);

#[test]
fn a_broker_killed_and_another_stopped_under_load_lose_nothing() {
    let private = PrivateStack::with_brokers("brokers", 3);
    let mut env = TestEnv::on(private.stack, "brokers", 9);
    let instance = env.start_handler(&[]);
    let accounts: Vec<(String, String)> = (0..6).map(|_| env.open_account()).collect();
    settle_group(&mut env, &[instance]);
    let mut rng = StdRng::seed_from_u64(41);
    // About 50 commands a second (the three brokers leave two cores little room), for
    // the two outages and a while after each.
    let commands = load(&mut rng, &accounts, 2_400);
    let mut chunks = commands.chunks(10);
    let mut send_for = |env: &mut TestEnv, how_long: Duration| {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            let Some(chunk) = chunks.next() else { return };
            for command in chunk {
                env.send_transfer(command);
            }
            env.flush();
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    send_for(&mut env, Duration::from_secs(5));
    private.kill("kafka-2");
    send_for(&mut env, AWAY);
    private.start("kafka-2");
    send_for(&mut env, Duration::from_secs(5));
    // As an operator does before the next broker: the one back has caught up.
    env.wait_until_fully_replicated();
    send_for(&mut env, Duration::from_secs(5));
    private.stop("kafka-3");
    send_for(&mut env, AWAY);
    private.start("kafka-3");
    send_for(&mut env, Duration::from_secs(1_000));
    assert!(env.handler(instance).is_running(), "the handler stopped");
    let findings = check_invariants(&mut env, &commands, &accounts);
    assert_nothing_lost(
        "one instance on three brokers, one SIGKILLed and one stopped under load",
        &findings,
        commands.len(),
    );
}
