//! The Avro schemas of SPEC §3, built once, in the JVM services' form.

use std::sync::LazyLock;

use apache_avro::Schema;

pub const NAMESPACE: &str = "nl.openweb.data";

// Named types are defined at their first use and referred to by name afterwards, as
// the JVM services' schemas do.
const UUID_TYPE: &str = r#"{"type":"fixed","name":"Uuid","size":16}"#;
const ATYPE_TYPE: &str = r#"{"type":"enum","name":"Atype","symbols":["AUTO","MANUAL"]}"#;

fn record_schema(name: &str, fields: &[(&str, &str)]) -> Schema {
    let fields: Vec<String> = fields
        .iter()
        .map(|(field, ty)| format!(r#"{{"name":"{field}","type":{ty}}}"#))
        .collect();
    let json = format!(
        r#"{{"type":"record","name":"{name}","namespace":"{NAMESPACE}","fields":[{}]}}"#,
        fields.join(",")
    );
    Schema::parse_str(&json).unwrap_or_else(|e| panic!("built-in schema {name} is invalid: {e}"))
}

/// The handler's schemas, parsed once.
pub struct Schemas {
    pub confirm_account_creation: Schema,
    pub account_creation_confirmed: Schema,
    pub account_creation_failed: Schema,
    pub confirm_money_transfer: Schema,
    pub money_transfer_confirmed: Schema,
    pub money_transfer_failed: Schema,
    pub balance_changed: Schema,
}

pub static SCHEMAS: LazyLock<Schemas> = LazyLock::new(|| {
    let string = r#""string""#;
    let long = r#""long""#;
    Schemas {
        confirm_account_creation: record_schema(
            "ConfirmAccountCreation",
            &[("id", UUID_TYPE), ("a_type", ATYPE_TYPE)],
        ),
        account_creation_confirmed: record_schema(
            "AccountCreationConfirmed",
            &[
                ("id", UUID_TYPE),
                ("iban", string),
                ("token", string),
                ("a_type", ATYPE_TYPE),
            ],
        ),
        account_creation_failed: record_schema(
            "AccountCreationFailed",
            &[("id", UUID_TYPE), ("reason", string)],
        ),
        confirm_money_transfer: record_schema(
            "ConfirmMoneyTransfer",
            &[
                ("id", UUID_TYPE),
                ("token", string),
                ("amount", long),
                ("from", string),
                ("to", string),
                ("description", string),
            ],
        ),
        money_transfer_confirmed: record_schema("MoneyTransferConfirmed", &[("id", UUID_TYPE)]),
        money_transfer_failed: record_schema(
            "MoneyTransferFailed",
            &[("id", UUID_TYPE), ("reason", string)],
        ),
        balance_changed: record_schema(
            "BalanceChanged",
            &[
                ("iban", string),
                ("new_balance", long),
                ("changed_by", long),
                ("from_to", string),
                ("description", string),
            ],
        ),
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_have_the_spec_fields_in_order() {
        let names = |schema: &Schema| match schema {
            Schema::Record(record) => (
                record.name.fullname(None),
                record
                    .fields
                    .iter()
                    .map(|f| f.name.clone())
                    .collect::<Vec<_>>(),
            ),
            _ => panic!("not a record"),
        };
        let s = &*SCHEMAS;
        assert_eq!(
            names(&s.confirm_money_transfer),
            (
                "nl.openweb.data.ConfirmMoneyTransfer".to_string(),
                ["id", "token", "amount", "from", "to", "description"]
                    .map(String::from)
                    .to_vec()
            )
        );
        assert_eq!(
            names(&s.balance_changed).1,
            [
                "iban",
                "new_balance",
                "changed_by",
                "from_to",
                "description"
            ]
        );
        assert_eq!(
            names(&s.account_creation_confirmed).1,
            ["id", "iban", "token", "a_type"]
        );
        assert_eq!(names(&s.confirm_account_creation).1, ["id", "a_type"]);
        assert_eq!(names(&s.account_creation_failed).1, ["id", "reason"]);
        assert_eq!(names(&s.money_transfer_confirmed).1, ["id"]);
        assert_eq!(names(&s.money_transfer_failed).1, ["id", "reason"]);
    }
}
