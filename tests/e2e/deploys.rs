//! Deploys and crashes of instances: each instance is a static member of the group
//! (`KAFKA_GROUP_INSTANCE_ID`; the harness gives each running handler a slot of its
//! own), so one restarted under the same name takes its partitions back at once and
//! the others never rebalance. The session timeout is set far beyond the tests'
//! deadlines: a handler that had to wait for a dead member's session to end, or that
//! set off a rebalance, fails them. Afterwards, as in `faults`, nothing is lost, nothing
//! applied twice, one kind of answer per command, each account's events in order.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::harness::*;
use crate::invariants::*;

/// Five minutes: no test waits that long for anything, so nothing in them may wait for
/// a member's session to time out.
const LONG_SESSION: [(&str, &str); 1] = [("RDKAFKA_CONSUMER_SESSION_TIMEOUT_MS", "300000")];

/// Assignment changes of every running instance but `except`.
fn others_changes(env: &mut TestEnv, running: &[usize], except: usize) -> usize {
    running
        .iter()
        .filter(|&&i| i != except)
        .map(|&i| membership_changes(env, i))
        .sum()
}

/// Sends `commands` in rounds of 25, 100 ms apart (about 200 a second), and calls
/// `between(env, round)` after each round.
fn send_in_rounds(
    env: &mut TestEnv,
    commands: &[TransferCmd],
    mut between: impl FnMut(&mut TestEnv, usize),
) {
    for (round, chunk) in commands.chunks(25).enumerate() {
        for command in chunk {
            env.send_transfer(command);
        }
        env.flush();
        std::thread::sleep(Duration::from_millis(100));
        between(env, round);
    }
}

#[test]
fn a_rolling_restart_of_three_instances_under_load_moves_no_partition_and_loses_nothing() {
    let mut env = TestEnv::with_partitions("rolling", 9);
    let mut running: Vec<usize> = (0..3).map(|_| env.start_handler(&LONG_SESSION)).collect();
    let accounts: Vec<(String, String)> = (0..6).map(|_| env.open_account()).collect();
    settle_group(&mut env, &running);
    let mut rng = StdRng::seed_from_u64(31);
    let commands = load(&mut rng, &accounts, 1_500 * scale());
    let rounds = commands.len().div_ceil(25);
    let restarts_at = [rounds / 4, rounds / 2, 3 * rounds / 4];
    let mut rebalances_seen = Vec::new();
    send_in_rounds(&mut env, &commands, |env, round| {
        let Some(which) = restarts_at.iter().position(|&at| at == round) else {
            return;
        };
        // A deploy: SIGTERM, the instance exits 0, its successor starts at once under
        // the same name (the freed slot).
        let leaving = running[which];
        let before = others_changes(env, &running, leaving);
        env.handler(leaving).stop_cleanly();
        let successor = env.start_handler(&LONG_SESSION);
        let slot = env.handler(leaving).slot;
        assert_eq!(env.handler(successor).slot, slot);
        running[which] = successor;
        wait_for_both_topics(env, successor);
        rebalances_seen.push(others_changes(env, &running, successor) - before);
    });
    let findings = check_invariants(&mut env, &commands, &accounts);
    assert_nothing_lost(
        "3 instances restarted one after another under load",
        &findings,
        commands.len(),
    );
    assert_eq!(
        rebalances_seen,
        [0, 0, 0],
        "assignment changes the other instances saw at each restart"
    );
}

#[test]
fn a_crashed_instance_started_again_at_once_takes_its_partitions_back_without_a_rebalance() {
    let mut env = TestEnv::with_partitions("crash", 9);
    let mut running: Vec<usize> = (0..2).map(|_| env.start_handler(&LONG_SESSION)).collect();
    let accounts: Vec<(String, String)> = (0..6).map(|_| env.open_account()).collect();
    settle_group(&mut env, &running);
    let mut rng = StdRng::seed_from_u64(32);
    let commands = load(&mut rng, &accounts, 800 * scale());
    let rounds = commands.len().div_ceil(25);
    let mut rebalances_seen = None;
    send_in_rounds(&mut env, &commands, |env, round| {
        if round != rounds / 2 {
            return;
        }
        // A crash with `restart: always`: SIGKILL, and the same name again at once.
        // The dead member's session would hold its partitions for five minutes; the
        // successor replaces it in the group instead.
        let victim = running[0];
        let before = others_changes(env, &running, victim);
        env.handler(victim).signal("KILL");
        env.handler(victim).wait_exit(Duration::from_secs(10));
        let successor = env.start_handler(&LONG_SESSION);
        running[0] = successor;
        wait_for_both_topics(env, successor);
        rebalances_seen = Some(others_changes(env, &running, successor) - before);
    });
    let findings = check_invariants(&mut env, &commands, &accounts);
    assert_nothing_lost(
        "2 instances, one SIGKILLed and started again at once under load",
        &findings,
        commands.len(),
    );
    assert_eq!(
        rebalances_seen,
        Some(0),
        "assignment changes the surviving instance saw"
    );
}

/// Two instances given one name would take each other's partitions in turn: the one
/// replaced stops with an error that says what to do, and the other goes on.
#[test]
fn a_second_instance_under_the_same_name_stops_the_first_with_a_clear_error() {
    let mut env = TestEnv::with_partitions("twins", 3);
    let name = format!("{}-twin", env.group);
    let same_name = [("KAFKA_GROUP_INSTANCE_ID", name.as_str())];
    let first = env.start_handler(&same_name);
    wait_for_both_topics(&mut env, first);
    let second = env.start_handler(&same_name);
    let status = env.handler(first).wait_exit(WAIT);
    let log = env.handler(first).log();
    assert!(
        !status.success(),
        "the replaced instance exited with {status}:\n{log}"
    );
    assert!(
        log.contains("give each instance its own KAFKA_GROUP_INSTANCE_ID"),
        "the replaced instance's log says why:\n{log}"
    );
    wait_for_both_topics(&mut env, second);
    let (iban, _) = env.open_account();
    let deposit = TransferCmd::new("", 100, "cash", &iban);
    env.send_transfer(&deposit);
    env.flush();
    env.await_answers(&[deposit.id]);
    assert!(env.handler(second).is_running());
}
