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

    // What each poison record is, its key and its value.
    type Poison<'a> = (&'a str, Option<&'a [u8]>, Option<&'a [u8]>);
    let poison: Vec<Poison> = vec![
        (
            "random bytes",
            Some(key.as_bytes()),
            Some(&[0xde, 0xad, 0xbe, 0xef, 0x17, 0x42, 0x00]),
        ),
        ("wrong magic byte", Some(key.as_bytes()), Some(&wrong_magic)),
        ("unknown schema id", Some(key.as_bytes()), Some(&unknown_id)),
        ("truncated datum", Some(key.as_bytes()), Some(&truncated)),
        ("wrong record type", Some(key.as_bytes()), Some(&wrong_type)),
        ("missing key", None, Some(&good_bytes)),
        ("non-UTF-8 key", Some(&[0xff, 0xfe]), Some(&good_bytes)),
        ("missing value", Some(key.as_bytes()), None),
    ];
    for (_, key, value) in &poison {
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
    for ((what, key, value), letter) in poison.iter().zip(&dead) {
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
        assert!(
            letter
                .header("dead_letter.reason")
                .is_some_and(|r| !r.is_empty()),
            "{what}"
        );
    }
    assert!(
        dead[4]
            .header("dead_letter.reason")
            .unwrap()
            .contains("Heartbeat")
    );
    // Only the two good transfers moved money.
    assert_eq!(env.amount(&iban), Some(8));
    assert!(
        env.answers_to(good.id).is_empty(),
        "the good value under a bad key was dead-lettered, not applied"
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
