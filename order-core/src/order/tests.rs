use super::*;
use std::str::FromStr;

fn order(user: &str, items: &[&str], amount: &str) -> NewOrder {
    NewOrder {
        user_id: user.into(),
        item_ids: items.iter().map(|s| (*s).to_owned()).collect(),
        total_amount: Decimal::from_str(amount).unwrap(),
    }
}

fn field_of(result: Result<ValidatedOrder, ValidationError>) -> String {
    result.unwrap_err().field
}

#[test]
fn a_well_formed_order_is_valid_and_its_amount_in_cents() {
    let valid = order("user-123", &["item1", "item2"], "59.9")
        .validate()
        .unwrap();
    assert_eq!(valid.user_id(), "user-123");
    assert_eq!(valid.item_ids(), ["item1", "item2"]);
    assert_eq!(valid.total_amount().to_string(), "59.90");
    let whole = order("u", &["i"], "60").validate().unwrap();
    assert_eq!(whole.total_amount().to_string(), "60.00");
}

#[test]
fn the_bounds_themselves_are_accepted() {
    let long = "x".repeat(MAX_ID_CHARS);
    let items: Vec<&str> = std::iter::repeat_n(long.as_str(), MAX_ITEMS).collect();
    let valid = order(&long, &items, "10000000000.00").validate().unwrap();
    assert_eq!(valid.total_amount(), Decimal::from(10_000_000_000_i64));
    assert_eq!(
        order("u", &["i"], "0").validate().unwrap().total_amount(),
        Decimal::ZERO
    );
    assert_eq!(
        order("u", &["i"], "-0.00")
            .validate()
            .unwrap()
            .total_amount()
            .to_string(),
        "0.00"
    );
}

#[test]
fn user_id_must_be_present_and_short() {
    assert_eq!(field_of(order("", &["i"], "1").validate()), "userId");
    assert_eq!(field_of(order("   ", &["i"], "1").validate()), "userId");
    let long = "é".repeat(MAX_ID_CHARS + 1);
    let err = order(&long, &["i"], "1").validate().unwrap_err();
    assert_eq!(err.field, "userId");
    assert_eq!(err.reason, "must be at most 128 characters");
    // 128 two-byte characters are 256 bytes, and still allowed.
    assert!(
        order(&"é".repeat(MAX_ID_CHARS), &["i"], "1")
            .validate()
            .is_ok()
    );
}

#[test]
fn item_ids_must_be_between_one_and_a_thousand_non_empty_ids() {
    assert_eq!(field_of(order("u", &[], "1").validate()), "itemIds");
    let many: Vec<&str> = std::iter::repeat_n("i", MAX_ITEMS + 1).collect();
    assert_eq!(field_of(order("u", &many, "1").validate()), "itemIds");
    assert_eq!(
        field_of(order("u", &["a", "", "c"], "1").validate()),
        "itemIds[1]"
    );
    let long = "x".repeat(MAX_ID_CHARS + 1);
    assert_eq!(
        field_of(order("u", &["a", &long], "1").validate()),
        "itemIds[1]"
    );
}

#[test]
fn total_amount_is_non_negative_cents_up_to_ten_billion() {
    let err = order("u", &["i"], "-0.01").validate().unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.reason.as_str()),
        ("totalAmount", "must not be negative")
    );
    let err = order("u", &["i"], "1.001").validate().unwrap_err();
    assert_eq!(err.reason, "must have at most 2 decimal places");
    // Trailing zeros are not extra precision.
    assert!(order("u", &["i"], "1.1000").validate().is_ok());
    let err = order("u", &["i"], "10000000000.01").validate().unwrap_err();
    assert_eq!(err.reason, "must be at most 10000000000");
}

#[test]
fn the_error_message_names_field_and_reason() {
    let err = order("u", &[], "1").validate().unwrap_err();
    assert_eq!(err.to_string(), "itemIds: must hold at least one item");
}

#[test]
fn order_ids_parse_only_from_positive_integers() {
    assert_eq!("7".parse::<OrderId>().unwrap().get(), 7);
    assert_eq!(
        "9223372036854775807".parse::<OrderId>().unwrap().get(),
        i64::MAX
    );
    for bad in ["0", "-1", "9223372036854775808", "1.5", "abc", "", " 1"] {
        assert!(bad.parse::<OrderId>().is_err(), "{bad:?} parsed");
    }
}

#[test]
fn statuses_round_trip_through_their_names_and_only_three_are_terminal() {
    for status in OrderStatus::ALL {
        assert_eq!(status.as_str().parse::<OrderStatus>().unwrap(), status);
        assert_eq!(
            serde_json::to_string(&status).unwrap(),
            format!("\"{status}\"")
        );
    }
    let terminal: Vec<_> = OrderStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect();
    assert_eq!(
        terminal,
        [
            OrderStatus::Completed,
            OrderStatus::Failed,
            OrderStatus::Cancelled
        ]
    );
}

#[test]
fn amounts_cross_json_exactly() {
    let parsed: NewOrder =
        serde_json::from_str(r#"{"userId":"u","itemIds":["i"],"totalAmount":9999999999.99}"#)
            .unwrap();
    assert_eq!(parsed.total_amount.to_string(), "9999999999.99");
    let json = serde_json::to_string(&parsed).unwrap();
    assert!(json.contains(r#""totalAmount":9999999999.99"#), "{json}");
    // 0.1 + 0.2 style float noise would show here if a float were involved anywhere.
    let parsed: NewOrder =
        serde_json::from_str(r#"{"userId":"u","itemIds":["i"],"totalAmount":0.30}"#).unwrap();
    assert_eq!(
        parsed.validate().unwrap().total_amount().to_string(),
        "0.30"
    );
}

#[test]
fn amounts_must_be_json_numbers_held_exactly() {
    let parse = |amount: &str| {
        serde_json::from_str::<NewOrder>(&format!(
            r#"{{"userId":"u","itemIds":["i"],"totalAmount":{amount}}}"#
        ))
    };
    assert!(
        parse(r#""1.00""#)
            .unwrap_err()
            .to_string()
            .contains("invalid type: string")
    );
    assert!(
        parse("1e400")
            .unwrap_err()
            .to_string()
            .contains("not an amount")
    );
    assert!(parse("0.1234567890123456789012345678901").is_err());
    assert_eq!(parse("1.5e2").unwrap().total_amount.to_string(), "150");
    assert_eq!(
        parse("-0").unwrap().validate().unwrap().total_amount(),
        Decimal::ZERO
    );
}

#[test]
fn unknown_fields_are_refused() {
    let err = serde_json::from_str::<NewOrder>(
        r#"{"userId":"u","itemIds":["i"],"totalAmount":1,"totalAmmount":2}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn one_step_follows_the_transitions_and_only_a_retry_leaves_a_terminal_status() {
    use OrderStatus::{Cancelled, Completed, Failed, Pending, Processing};
    let steps: Vec<_> = OrderStatus::ALL
        .into_iter()
        .flat_map(|from| OrderStatus::ALL.into_iter().map(move |to| (from, to)))
        .filter(|(from, to)| from.may_become(*to))
        .collect();
    assert_eq!(
        steps,
        [
            (Pending, Processing),
            (Pending, Cancelled),
            (Processing, Pending),
            (Processing, Processing),
            (Processing, Completed),
            (Processing, Failed),
            (Processing, Cancelled),
            (Failed, Pending),
        ]
    );
    for terminal in [Completed, Cancelled] {
        assert!(OrderStatus::ALL.iter().all(|s| !terminal.may_become(*s)));
    }
}

#[test]
fn reach_is_every_status_from_the_living_ones_and_failed_and_only_itself_from_the_others() {
    use OrderStatus::{Cancelled, Completed};
    for from in OrderStatus::ALL {
        for to in OrderStatus::ALL {
            let expected = from == to || !matches!(from, Completed | Cancelled);
            assert_eq!(from.may_reach(to), expected, "{from} -> {to}");
        }
    }
}
