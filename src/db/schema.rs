// The tables this handler reads and writes (see migrations/). Timestamps are left to
// the database defaults and trigger, so they are not mapped.

diesel::table! {
    balance (balance_id) {
        balance_id -> Int4,
        iban -> Text,
        token -> Text,
        amount -> Int8,
        #[sql_name = "type"]
        account_type -> Text,
        lmt -> Int8,
    }
}

diesel::table! {
    cac (uuid) {
        uuid -> Uuid,
        iban -> Nullable<Text>,
        token -> Nullable<Text>,
        #[sql_name = "type"]
        account_type -> Nullable<Text>,
        reason -> Nullable<Text>,
    }
}

diesel::table! {
    cmt (uuid) {
        uuid -> Uuid,
        reason -> Nullable<Text>,
        source_partition -> Nullable<Int4>,
        source_offset -> Nullable<Int8>,
    }
}

diesel::table! {
    cmt_balance_changed (cmt_uuid, position) {
        cmt_uuid -> Uuid,
        position -> Int2,
        iban -> Text,
        new_balance -> Int8,
        changed_by -> Int8,
        from_to -> Bytea,
        description -> Bytea,
        seq -> Int8,
    }
}

diesel::joinable!(cmt_balance_changed -> cmt (cmt_uuid));
diesel::allow_tables_to_appear_in_same_query!(balance, cac, cmt, cmt_balance_changed);
