//! Records that cannot be commands go to the dead-letter topic, as they came, and the
//! records after them are still handled. Writer schemas that only add properties or
//! defaulted fields decode.

use apache_avro::types::Value;
use uuid::Uuid;

use crate::harness::*;

#[test]
fn poison_records_are_dead_lettered_and_the_next_ones_answered() {
    let mut env = TestEnv::with_partitions("poison", 1);
    env.start_handler(&[]);
    let (iban, _) = env.open_account();
    let cmt = env.topics.cmt.clone();

    let good = TransferCmd::new("", 42, "cash", &iban);
    let good_bytes = TestEnv::wire_bytes(
        env.register(&cmt, "ConfirmMoneyTransfer", CONFIRM_MONEY_TRANSFER_SCHEMA),
        CONFIRM_MONEY_TRANSFER_SCHEMA,
        good.fields(),
    );
    // A valid record of another type, registered for this topic.
    let wrong_type_schema = r#"{"type":"record","name":"Heartbeat","namespace":"nl.openweb.data","fields":[{"name":"beat","type":"long"}]}"#;
    let wrong_type_id = env.register(&cmt, "Heartbeat", wrong_type_schema);
    let wrong_type = TestEnv::wire_bytes(
        wrong_type_id,
        wrong_type_schema,
        vec![("beat".into(), Value::Long(1))],
    );
    let mut wrong_magic = good_bytes.clone();
    wrong_magic[0] = 1;
    let mut unknown_id = good_bytes.clone();
    unknown_id[1..5].copy_from_slice(&9_999_999u32.to_be_bytes());
    let truncated = good_bytes[..good_bytes.len() - 5].to_vec();
    let key = Uuid::new_v4().to_string();

    // What each poison record is, its key, its value, and what its reason must say.
    type Poison<'a> = (&'a str, Option<&'a [u8]>, Option<&'a [u8]>, &'a str);
    let poison: Vec<Poison> = vec![
        (
            "random bytes",
            Some(key.as_bytes()),
            Some(&[0xde, 0xad, 0xbe, 0xef, 0x17, 0x42, 0x00]),
            "expected magic byte 0x00",
        ),
        (
            "wrong magic byte",
            Some(key.as_bytes()),
            Some(&wrong_magic),
            "first byte is 0x01",
        ),
        (
            "unknown schema id",
            Some(key.as_bytes()),
            Some(&unknown_id),
            "Schema 9999999 not found",
        ),
        (
            "truncated datum",
            Some(key.as_bytes()),
            Some(&truncated),
            "does not resolve to the reader schema",
        ),
        (
            "wrong record type",
            Some(key.as_bytes()),
            Some(&wrong_type),
            "expected a nl.openweb.data.ConfirmMoneyTransfer record, got nl.openweb.data.Heartbeat",
        ),
        ("missing key", None, Some(&good_bytes), "record has no key"),
        (
            "non-UTF-8 key",
            Some(&[0xff, 0xfe]),
            Some(&good_bytes),
            "key is not UTF-8",
        ),
        (
            "missing value",
            Some(key.as_bytes()),
            None,
            "record has no value",
        ),
    ];
    for (_, key, value, _) in &poison {
        env.send_raw(&cmt, *key, *value);
    }
    let after = TransferCmd::new("", 8, "cash", &iban);
    env.send_transfer(&after);
    env.flush();

    assert!(
        env.await_answer(after.id)
            .record_name()
            .ends_with("MoneyTransferConfirmed")
    );
    let dlq = env.topics.dlq.clone();
    env.collect_until("every poison record dead-lettered", |o| {
        o.iter().filter(|o| o.topic == dlq).count() == poison.len()
    });
    let dead: Vec<Output> = env.on_topic(&dlq).cloned().collect();
    for ((what, key, value, reason), letter) in poison.iter().zip(&dead) {
        assert_eq!(
            letter.value.as_deref(),
            *value,
            "{what}: value kept as it came"
        );
        assert_eq!(letter.key.as_deref(), *key, "{what}: key kept");
        assert_eq!(
            letter.header("dead_letter.topic").as_deref(),
            Some(cmt.as_str()),
            "{what}"
        );
        assert_eq!(
            letter.header("dead_letter.partition").as_deref(),
            Some("0"),
            "{what}"
        );
        assert!(
            letter
                .header("dead_letter.offset")
                .is_some_and(|o| o.parse::<i64>().is_ok()),
            "{what}"
        );
        let given = letter.header("dead_letter.reason").unwrap_or_default();
        assert!(given.contains(reason), "{what}: reason {given:?}");
    }
    // Only the two good transfers moved money.
    assert_eq!(env.amount(&iban), Some(8));
    assert!(
        env.answers_to(good.id).is_empty(),
        "the good value under a bad key was dead-lettered, not applied"
    );
}

/// A dead letter larger than its topic accepts goes without its value (the record stays
/// readable where it came from), and the partition moves on.
#[test]
fn a_dead_letter_too_large_for_its_topic_goes_without_its_value() {
    let mut env = TestEnv::with_partitions("big_poison", 1);
    let dlq = env.topics.dlq.clone();
    env.stack
        .set_topic_config(&dlq, &[("max.message.bytes", "4096")]);
    env.start_handler(&[]);
    let (iban, _) = env.open_account();
    let cmt = env.topics.cmt.clone();
    let (big_key, small_key) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let big = vec![0xab_u8; 64 * 1024];
    env.send_raw(&cmt, Some(big_key.as_bytes()), Some(&big));
    env.send_raw(&cmt, Some(small_key.as_bytes()), Some(b"not avro"));
    let after = TransferCmd::new("", 5, "cash", &iban);
    env.send_transfer(&after);
    env.flush();

    assert!(
        env.await_answer(after.id)
            .record_name()
            .ends_with("MoneyTransferConfirmed")
    );
    env.collect_until("both dead letters", |o| {
        o.iter().filter(|o| o.topic == dlq).count() >= 2
    });
    let dead: Vec<Output> = env.on_topic(&dlq).cloned().collect();
    assert_eq!(dead.len(), 2, "one dead letter per poison record");
    let stub = &dead[0];
    assert_eq!(stub.key_text(), big_key);
    assert_eq!(stub.value, None, "the value stays in {cmt}");
    assert_eq!(
        stub.header("dead_letter.value_size").as_deref(),
        Some("65536")
    );
    assert_eq!(
        stub.header("dead_letter.topic").as_deref(),
        Some(cmt.as_str())
    );
    assert_eq!(stub.header("dead_letter.partition").as_deref(), Some("0"));
    assert_eq!(stub.header("dead_letter.offset").as_deref(), Some("0"));
    assert!(
        stub.header("dead_letter.reason")
            .is_some_and(|r| !r.is_empty())
    );
    let small = &dead[1];
    assert_eq!(small.key_text(), small_key);
    assert_eq!(
        small.value.as_deref(),
        Some(&b"not avro"[..]),
        "small enough: kept"
    );
}

/// One record of a partition refused at once while later ones of the same partition
/// get through: the handler sends again from the refused one onward, so the partition
/// may repeat records but never ends them out of order. The refusal: the producer
/// sends at most 20,000 bytes (`RDKAFKA_PRODUCER_MESSAGE_MAX_BYTES`), which the handler
/// learns only when librdkafka refuses a 64 KB dead letter; the small dead letters
/// after it, in the same batch, are sent meanwhile.
#[test]
fn a_send_refused_before_later_ones_got_through_keeps_the_partitions_order() {
    let mut env = TestEnv::with_partitions("reorder", 1);
    let (cmt, dlq) = (env.topics.cmt.clone(), env.topics.dlq.clone());
    // All in the topic before the handler starts: its first poll takes them together.
    let keys: Vec<String> = (0..4).map(|_| Uuid::new_v4().to_string()).collect();
    env.send_raw(
        &cmt,
        Some(keys[0].as_bytes()),
        Some(&vec![0xab_u8; 64 * 1024]),
    );
    for key in &keys[1..] {
        env.send_raw(&cmt, Some(key.as_bytes()), Some(b"not avro"));
    }
    env.flush();
    env.start_handler(&[("RDKAFKA_PRODUCER_MESSAGE_MAX_BYTES", "20000")]);

    let last = keys[3].clone();
    env.collect_until("the dead letters, the refused one without its value", |o| {
        o.iter()
            .any(|o| o.topic == dlq && o.key_text() == keys[0] && o.value.is_none())
            && o.iter().any(|o| o.topic == dlq && o.key_text() == last)
    });
    env.barrier();
    let written: Vec<String> = env.on_topic(&dlq).map(|o| o.key_text()).collect();
    // Each key's last copy is where the partition ends it: in the records' order.
    let last_copies: Vec<usize> = keys
        .iter()
        .map(|key| {
            written
                .iter()
                .rposition(|k| k == key)
                .unwrap_or_else(|| panic!("{key} not dead-lettered: {written:?}"))
        })
        .collect();
    assert!(
        last_copies.is_sorted(),
        "dead letters out of order: {written:?} for {keys:?}"
    );
    // The later ones got through before the refused one was sent again: they repeat.
    assert!(
        written.len() > keys.len(),
        "no dead letter was sent again: {written:?}"
    );
}

#[test]
fn evolved_writer_schemas_still_decode() {
    let mut env = TestEnv::new("evolution");
    env.start_handler(&[]);
    let (iban, _) = env.open_account();
    // A newer producer added a defaulted field and Java properties on its strings.
    let evolved = r#"{"type":"record","name":"ConfirmMoneyTransfer","namespace":"nl.openweb.data","doc":"v2","fields":[{"name":"id","type":{"type":"fixed","name":"Uuid","size":16}},{"name":"token","type":{"type":"string","avro.java.string":"String"}},{"name":"amount","type":"long"},{"name":"from","type":{"type":"string","avro.java.string":"String"}},{"name":"to","type":{"type":"string","avro.java.string":"String"}},{"name":"description","type":{"type":"string","avro.java.string":"String"}},{"name":"channel","type":{"type":"string","avro.java.string":"String"},"default":"web"}]}"#;
    let cmt = env.topics.cmt.clone();
    let id = env.register(&cmt, "ConfirmMoneyTransfer", evolved);
    let command = TransferCmd::new("", 321, "cash", &iban);
    let mut fields = command.fields();
    fields.push(("channel".into(), Value::String("mobile".into())));
    let bytes = TestEnv::wire_bytes(id, evolved, fields);
    env.send_raw(&cmt, Some(command.id.to_string().as_bytes()), Some(&bytes));
    env.flush();
    assert_eq!(
        env.await_answer(command.id).record_name(),
        "nl.openweb.data.MoneyTransferConfirmed"
    );
    assert_eq!(env.amount(&iban), Some(321));
}

/// Arbitrary and mutated values through the handler's own decode path (registry lookup,
/// datum decoding, resolution to the reader schema, typed record), against the real
/// registry: every input must end in a command or a clear error, never a panic or a
/// hang. `FUZZ_ITERATIONS` raises the budget for a longer run.
#[test]
fn decoding_arbitrary_bytes_never_panics_or_hangs() {
    use open_bank_command_handler::wire::{
        CommandDecoder, DecodeError, REGISTRY_TIMEOUT, limit_datum_allocations, registry_settings,
    };
    use rand::{RngExt, SeedableRng};

    let env = TestEnv::with_partitions("fuzz", 1);
    limit_datum_allocations();
    let decoder = CommandDecoder::new(
        registry_settings(&Stack::get().registry_url, None, REGISTRY_TIMEOUT).unwrap(),
    );
    let schema_id = env.register(
        &env.topics.cmt,
        "ConfirmMoneyTransfer",
        CONFIRM_MONEY_TRANSFER_SCHEMA,
    );
    let valid = TestEnv::wire_bytes(
        schema_id,
        CONFIRM_MONEY_TRANSFER_SCHEMA,
        TransferCmd::new("t", 5, "cash", BANK_IBAN).fields(),
    );
    assert!(
        decoder.decode_money_transfer(&valid).is_ok(),
        "the seed decodes"
    );

    let iterations: usize = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0ba4_c0de);
    let (mut decoded, mut malformed) = (0, 0);
    let started = std::time::Instant::now();
    for i in 0..iterations {
        let mut bytes = if i % 4 == 0 {
            // Anything at all behind a valid header.
            let mut b = valid[..5].to_vec();
            b.extend((0..rng.random_range(0..64)).map(|_| rng.random::<u8>()));
            b
        } else {
            valid.clone()
        };
        for _ in 0..rng.random_range(1..5) {
            let at = rng.random_range(5..bytes.len().max(6));
            match rng.random_range(0..6) {
                0 if at < bytes.len() => bytes[at] = rng.random(),
                1 => bytes.insert(at.min(bytes.len()), rng.random()),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                3 => bytes.truncate(at),
                // A huge or negative length prefix.
                4 => bytes
                    .splice(
                        at.min(bytes.len())..at.min(bytes.len()),
                        [0xfe, 0xff, 0xff, 0xff, 0x0f],
                    )
                    .for_each(drop),
                _ => bytes.extend_from_slice(&[
                    0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
                ]),
            }
        }
        if i % 50 == 0 {
            bytes[0] = rng.random(); // a wrong magic byte now and then
        }
        match decoder.decode_money_transfer(&bytes) {
            Ok(_) => decoded += 1,
            Err(DecodeError::Malformed(_)) => malformed += 1,
            Err(error @ DecodeError::RegistryUnavailable(_)) => {
                panic!("input {i}: {error} ({bytes:?})")
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!("fuzz: {iterations} inputs in {elapsed:?}: {decoded} decoded, {malformed} malformed");
    assert_eq!(decoded + malformed, iterations);
    assert!(malformed > iterations / 2, "most mutations must be refused");
    // A generous bound that only a hang (not a slow machine) would pass.
    assert!(
        elapsed < std::time::Duration::from_secs(120),
        "decoding took {elapsed:?}: something hangs"
    );
}

/// Valid records with absurd contents get clear answers, and one too large to be a
/// command goes to the dead-letter topic; the records after them are handled.
#[test]
fn absurd_contents_get_clear_answers() {
    let mut env = TestEnv::with_partitions("absurd", 1);
    env.start_handler(&[]);
    let (iban, token) = env.open_account();
    let long = "NL".repeat(50_000);
    let cases = [
        (
            TransferCmd::new("", 5, &long, &iban),
            Some("from is invalid"),
        ),
        (
            TransferCmd::new("", 5, "NL66OPEN000000000\u{0}", &iban),
            Some("from is invalid"),
        ),
        (
            TransferCmd::new("", 5, "ＮＬ66OPEN0000000000", &iban),
            Some("from is invalid"),
        ),
        (
            TransferCmd::new("", 5, "cash", &long),
            Some("both to and from not known at this bank"),
        ),
        (
            TransferCmd::new("", i64::MIN, "cash", &iban),
            Some("amount should be greater than zero"),
        ),
        (TransferCmd::new("", i64::MAX, "cash", &iban), None),
        (
            TransferCmd::new("", 1, "cash", &iban),
            Some("amount is too large"),
        ),
        (
            TransferCmd::new(&long, 1, &iban, "cash"),
            Some("invalid token"),
        ),
        // Any text is a description, NUL and all; it comes back unchanged.
        (
            TransferCmd {
                description: format!("a\u{0}b {}", "€".repeat(10_000)),
                ..TransferCmd::new(&token, 1, &iban, "\u{0}")
            },
            None,
        ),
    ];
    for (command, reason) in &cases {
        assert_eq!(
            env.transfer(command).as_deref(),
            *reason,
            "{:.80?}",
            command
        );
    }
    let bc = env.topics.bc.clone();
    env.collect_until("the event with the odd description", |o| {
        o.iter().filter(|o| o.topic == bc).count() == 2
    });
    let last = env
        .balance_changes_for(&iban)
        .last()
        .cloned()
        .cloned()
        .unwrap();
    assert_eq!(last.string("description"), cases[8].0.description);
    assert_eq!(last.string("from_to"), "\u{0}");

    // A value larger than any command can be (but within what Kafka takes) is
    // dead-lettered as it came, and the next command is answered.
    let huge = vec![0u8; 900_000];
    env.send_raw(&env.topics.cmt.clone(), Some(b"huge"), Some(&huge));
    let after = TransferCmd::new("", 7, "cash", BANK_IBAN);
    assert_eq!(env.transfer(&after), None);
    let dlq = env.topics.dlq.clone();
    env.collect_until("the huge value dead-lettered", |o| {
        o.iter().any(|o| o.topic == dlq)
    });
    assert_eq!(
        env.on_topic(&dlq)
            .next()
            .unwrap()
            .value
            .as_ref()
            .map(Vec::len),
        Some(900_000)
    );
}

/// A command the database refuses for good (here a check constraint an operator added)
/// is dead-lettered with the database's reason; the other commands of its batch are
/// applied and answered, and nothing waits behind it.
#[test]
fn a_command_the_database_refuses_for_good_is_dead_lettered_and_the_rest_applied() {
    let mut env = TestEnv::with_partitions("refused", 1);
    env.start_handler(&[]);
    let (iban, _) = env.open_account();
    diesel::connection::SimpleConnection::batch_execute(
        &mut env.admin_db(),
        "ALTER TABLE cmt_balance_changed ADD CONSTRAINT short_descriptions \
         CHECK (length(description) < 100)",
    )
    .unwrap();
    let before = TransferCmd::new("", 3, "cash", &iban);
    let mut refused = TransferCmd::new("", 5, "cash", &iban);
    refused.description = "x".repeat(200);
    let after = TransferCmd::new("", 7, "cash", &iban);
    for command in [&before, &refused, &after] {
        env.send_transfer(command);
    }
    env.flush();

    env.await_answers(&[before.id, after.id]);
    let dlq = env.topics.dlq.clone();
    env.collect_until("the refused command dead-lettered", |o| {
        o.iter().any(|o| o.topic == dlq)
    });
    let letter = env.on_topic(&dlq).next().cloned().unwrap();
    assert_eq!(letter.key_text(), refused.id.to_string());
    let reason = letter.header("dead_letter.reason").unwrap_or_default();
    assert!(reason.contains("short_descriptions"), "{reason}");
    assert!(env.answers_to(refused.id).is_empty());
    assert_eq!(env.amount(&iban), Some(3 + 7));
}
