//! The row of `order_engine_orders`, as sea-orm maps it.

// The derive macros generate `pub` items (Column, ActiveModel, ...) inside this private module.
#![allow(unreachable_pub, missing_docs)]

use sea_orm::entity::prelude::*;

use crate::error::StorageError;
use crate::order::{Order, OrderId, OrderStatus};

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
    pub lease_expires_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub processing_start_time: Option<DateTimeUtc>,
    pub processing_end_time: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl TryFrom<Model> for Order {
    type Error = StorageError;

    fn try_from(row: Model) -> Result<Self, StorageError> {
        let corrupt = |what: &str| {
            StorageError::other(format!("order row {} holds an invalid {what}", row.id))
        };
        Ok(Order {
            id: OrderId::new(row.id).ok_or_else(|| corrupt("id"))?,
            status: row
                .status
                .parse::<OrderStatus>()
                .map_err(|_| corrupt("status"))?,
            attempts: u32::try_from(row.attempts).map_err(|_| corrupt("attempts"))?,
            user_id: row.user_id,
            item_ids: row.item_ids,
            total_amount: row.total_amount,
            created_at: row.created_at,
            updated_at: row.updated_at,
            processing_start_time: row.processing_start_time,
            processing_end_time: row.processing_end_time,
            last_error: row.last_error,
        })
    }
}
