//! The row of `order_engine_orders`, as sea-orm maps it.

// The derive macros generate `pub` items (Column, ActiveModel, ...) inside this private module.
#![allow(unreachable_pub, missing_docs)]

use sea_orm::entity::prelude::*;
use sea_orm::{FromQueryResult, QueryResult};

use super::error::storage_error;
use crate::error::StorageError;
use crate::order::FailureRecord;
use crate::order::failures::decode_failures;
use crate::order::{Order, OrderId, OrderStatus};
use crate::step::{StepRecord, decode_steps};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "order_engine_orders")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: String,
    pub item_ids: Vec<String>,
    #[sea_orm(column_type = "Decimal(Some((14, 2)))")]
    pub total_amount: Decimal,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub claim_token: Option<Uuid>,
    pub available_at: Option<DateTimeUtc>,
    pub deliveries: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub processing_start_time: Option<DateTimeUtc>,
    pub processing_end_time: Option<DateTimeUtc>,
    pub steps: Option<String>,
    pub cancel_requested_at: Option<DateTimeUtc>,
    pub failures: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl TryFrom<Model> for Order {
    type Error = StorageError;

    fn try_from(row: Model) -> Result<Self, StorageError> {
        let (id, status, attempts) = checked(row.id, &row.status, row.attempts)?;
        Ok(Order {
            id,
            status,
            attempts,
            user_id: row.user_id,
            item_ids: row.item_ids,
            total_amount: row.total_amount,
            created_at: row.created_at,
            updated_at: row.updated_at,
            processing_start_time: row.processing_start_time,
            processing_end_time: row.processing_end_time,
            last_error: row.last_error,
            steps: steps(row.id, row.steps.as_deref())?,
            cancel_requested_at: row.cancel_requested_at,
            failures: failures(row.id, row.failures.as_deref())?,
        })
    }
}

/// A row's id, status and attempts as the domain's types; a value outside them means the row
/// was written by hand.
fn checked(
    raw: i64,
    status: &str,
    attempts: i32,
) -> Result<(OrderId, OrderStatus, u32), StorageError> {
    let corrupt =
        |what: &str| StorageError::other(format!("order row {raw} holds an invalid {what}"));
    Ok((
        OrderId::new(raw).ok_or_else(|| corrupt("id"))?,
        status
            .parse::<OrderStatus>()
            .map_err(|_| corrupt("status"))?,
        u32::try_from(attempts).map_err(|_| corrupt("attempts"))?,
    ))
}

/// The step records stored in the row of order `raw` (none when `NULL`).
fn steps(raw: i64, text: Option<&str>) -> Result<Vec<StepRecord>, StorageError> {
    text.map(decode_steps).transpose().map_or_else(
        |err| {
            Err(
                StorageError::other(format!("order row {raw} holds unreadable steps"))
                    .with_source(err),
            )
        },
        |steps| Ok(steps.unwrap_or_default()),
    )
}

/// The earlier failures stored in the row of order `raw` (none when `NULL`).
fn failures(raw: i64, text: Option<&str>) -> Result<Vec<FailureRecord>, StorageError> {
    text.map(decode_failures).transpose().map_or_else(
        |err| {
            Err(
                StorageError::other(format!("order row {raw} holds unreadable failures"))
                    .with_source(err),
            )
        },
        |failures| Ok(failures.unwrap_or_default()),
    )
}

/// The order in a row of `order_engine_orders` columns (and maybe more).
pub(super) fn order_row(row: &QueryResult) -> Result<Order, StorageError> {
    let model = Model::from_query_result(row, "")
        .map_err(|err| storage_error("could not read the order", err))?;
    Order::try_from(model)
}

/// What starting an order writes to its row (`o`), in a claim's statement and in a Start of its
/// own alike: `{claim}` and `{lease}` are the expressions of the claim's token and of the lease
/// in microseconds. A PROCESSING order is due again when its lease ends; every start, a lapsed
/// lease's takeover included, is an attempt.
pub(super) const START: &str = "status = 'PROCESSING', claim_token = {claim},
       available_at = now() + {lease} * interval '1 microsecond',
       attempts = least(o.attempts, 2147483646) + 1,
       processing_start_time = coalesce(o.processing_start_time, now()),
       updated_at = now()";

/// [`START`] with the claim's and the lease's expressions filled in.
pub(super) fn start(claim: &str, lease: &str) -> String {
    START.replace("{claim}", claim).replace("{lease}", lease)
}

/// The columns an [`Order`] is read from, in the order [`decode_order`] reads them.
pub(super) const ORDER_COLUMNS: &str = "id, user_id, item_ids, total_amount, status, attempts, \
     last_error, created_at, updated_at, processing_start_time, processing_end_time, steps, \
     cancel_requested_at, failures";

/// An [`Order`] straight from a row of [`ORDER_COLUMNS`], as sqlx decodes it: no intermediate
/// model on the hot read path.
pub(super) fn decode_order(row: &sea_orm::sqlx::postgres::PgRow) -> Result<Order, StorageError> {
    use sea_orm::sqlx::Row;

    let read = |err| super::error::sqlx_storage_error("could not read the order", err);
    let raw: i64 = row.try_get(0).map_err(read)?;
    let stored_steps: Option<&str> = row.try_get(11).map_err(read)?;
    let stored_failures: Option<&str> = row.try_get(13).map_err(read)?;
    let (id, status, attempts) = checked(
        raw,
        row.try_get(4).map_err(read)?,
        row.try_get(5).map_err(read)?,
    )?;
    Ok(Order {
        id,
        status,
        attempts,
        user_id: row.try_get(1).map_err(read)?,
        item_ids: row.try_get(2).map_err(read)?,
        total_amount: row.try_get(3).map_err(read)?,
        last_error: row.try_get(6).map_err(read)?,
        created_at: row.try_get(7).map_err(read)?,
        updated_at: row.try_get(8).map_err(read)?,
        processing_start_time: row.try_get(9).map_err(read)?,
        processing_end_time: row.try_get(10).map_err(read)?,
        steps: steps(raw, stored_steps)?,
        cancel_requested_at: row.try_get(12).map_err(read)?,
        failures: failures(raw, stored_failures)?,
    })
}
