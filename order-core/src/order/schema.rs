//! The OpenAPI schemas of the fields whose rules derive attributes cannot state (an item id's
//! length, an exact number), built from the limits of [`super`] so that the documented rules and
//! [`NewOrder::validate`](super::NewOrder::validate) cannot drift apart.

use rust_decimal::Decimal;
use utoipa::openapi::schema::{Array, ArrayBuilder, Object, ObjectBuilder, Type};

use super::{ID_PATTERN, MAX_AMOUNT_SCALE, MAX_ID_CHARS, MAX_ITEMS, MAX_TOTAL_AMOUNT};

/// A user or item id: 1 to `MAX_ID_CHARS` characters, not all whitespace, no NUL.
fn id(description: &str, example: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .min_length(Some(1))
        .max_length(Some(MAX_ID_CHARS))
        .pattern(Some(ID_PATTERN))
        .examples([example])
        .build()
}

pub(super) fn user_id() -> Object {
    id(
        &format!(
            "Who places the order: 1 to {MAX_ID_CHARS} characters, not all whitespace, none \
             of them NUL."
        ),
        "user-123",
    )
}

pub(super) fn item_ids() -> Array {
    ArrayBuilder::new()
        .items(id(
            &format!(
                "An item id: 1 to {MAX_ID_CHARS} characters, not all whitespace, none of \
                 them NUL."
            ),
            "item1",
        ))
        .min_items(Some(1))
        .max_items(Some(MAX_ITEMS))
        .description(Some(format!(
            "What is ordered, in order: 1 to {MAX_ITEMS} item ids; the same id may appear more than once."
        )))
        .examples([serde_json::json!(["item1", "item2"])])
        .build()
}

pub(super) fn amount() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Number)
        .description(Some(format!(
            "An amount of money as an exact JSON number, never a string: from 0 to \
             {MAX_TOTAL_AMOUNT}, with at most {MAX_AMOUNT_SCALE} decimal places. It is read \
             from its decimal text, so 59.99 stays 59.99; stored orders show two decimal \
             places (59.9 becomes 59.90)."
        )))
        .minimum(Some(0))
        .maximum(u64::try_from(MAX_TOTAL_AMOUNT).ok())
        // One cent: the smallest step an amount can take.
        .multiple_of(f64::try_from(Decimal::new(1, MAX_AMOUNT_SCALE)).ok())
        .examples([serde_json::json!(59.99)])
        .build()
}
