//! `shop.orders.v1.OrderService`: accepts orders and reports who placed them, from the
//! `x-user-id` metadata the gateway derives from a verified token.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tonic::{Code, Request, Response, Status};

use super::Counters;
use super::grpc::{any, status_with_details};
use super::pb::google::rpc::BadRequest;
use super::pb::google::rpc::bad_request::FieldViolation;
use super::pb::shop::orders::v1::order_service_server::{OrderService, OrderServiceServer};
use super::pb::shop::orders::v1::{Order, OrderStatus, PlaceOrderRequest};

pub const SERVICE: &str = "shop.orders.v1.OrderService";

/// Metadata key carrying the caller's user id.
pub const USER_ID_HEADER: &str = "x-user-id";

/// The order service; order ids count up per shop ("ord-1", "ord-2", ...).
#[derive(Debug)]
pub struct Orders {
    counters: Arc<Counters>,
    next_id: AtomicU64,
}

/// A ready-to-serve order server.
pub fn server(counters: Arc<Counters>) -> OrderServiceServer<Orders> {
    OrderServiceServer::new(Orders {
        counters,
        next_id: AtomicU64::new(1),
    })
}

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` holding one field violation.
fn bad_request(message: &str, field: String, description: &str) -> Status {
    let detail = BadRequest {
        field_violations: vec![FieldViolation {
            field,
            description: description.to_owned(),
            ..Default::default()
        }],
    };
    status_with_details(Code::InvalidArgument, message, vec![any(&detail)])
}

#[tonic::async_trait]
impl OrderService for Orders {
    /// Rejects an empty order or a non-positive quantity. `total_units` is the sum of
    /// `quantity × price.units` over the items (unknown products count 0).
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        self.counters.orders.fetch_add(1, Ordering::Relaxed);
        let user_id = request
            .metadata()
            .get(USER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let request = request.into_inner();
        if request.items.is_empty() {
            return Err(bad_request(
                "order has no items",
                "items".to_owned(),
                "at least one item is required",
            ));
        }
        if let Some(i) = request.items.iter().position(|item| item.quantity <= 0) {
            return Err(bad_request(
                "order item quantity must be positive",
                format!("items[{i}].quantity"),
                "quantity must be at least 1",
            ));
        }
        let products = super::catalog::products();
        let total_units = request
            .items
            .iter()
            .map(|item| {
                let units = products
                    .iter()
                    .find(|p| p.id == item.product_id)
                    .and_then(|p| p.price.as_ref())
                    .map_or(0, |price| price.units);
                units * i64::from(item.quantity)
            })
            .sum();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(Order {
            id: format!("ord-{id}"),
            items: request.items,
            status: OrderStatus::Accepted.into(),
            user_id,
            total_units,
            placed_at: Some(SystemTime::now().into()),
        }))
    }
}
