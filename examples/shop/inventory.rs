//! `shop.inventory.v1.InventoryService`: stock levels for the catalog's SKUs.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tonic::{Request, Response, Status};

use super::Counters;
use super::faults::Faults;
use super::pb::shop::inventory::v1::inventory_service_server::{
    InventoryService, InventoryServiceServer,
};
use super::pb::shop::inventory::v1::{GetStockRequest, Stock};

pub const SERVICE: &str = "shop.inventory.v1.InventoryService";

/// Every stock level lives in this warehouse.
pub const WAREHOUSE: &str = "AMS-1";

/// The inventory service; knows the SKUs of the catalog products.
#[derive(Debug)]
pub struct Inventory {
    counters: Arc<Counters>,
    faults: Arc<Faults>,
}

/// A ready-to-serve inventory server.
pub fn server(counters: Arc<Counters>, faults: Arc<Faults>) -> InventoryServiceServer<Inventory> {
    InventoryServiceServer::new(Inventory { counters, faults })
}

/// Units available for `sku`, or `None` for an unknown SKU. Derived from the SKU's bytes
/// (33 for "SKU-001" up to 37 for "SKU-005") so tests can predict it without shared state.
pub fn available(sku: &str) -> Option<i32> {
    let known = super::catalog::products().iter().any(|p| p.sku == sku);
    known.then(|| sku.bytes().map(i32::from).sum::<i32>() % 50)
}

#[tonic::async_trait]
impl InventoryService for Inventory {
    async fn get_stock(
        &self,
        request: Request<GetStockRequest>,
    ) -> Result<Response<Stock>, Status> {
        self.counters.inventory.fetch_add(1, Ordering::Relaxed);
        let sku = request.into_inner().sku;
        self.faults.inventory.apply(&sku).await?;
        let available =
            available(&sku).ok_or_else(|| Status::not_found(format!("sku {sku} not found")))?;
        Ok(Response::new(Stock {
            sku,
            available,
            warehouse: WAREHOUSE.to_owned(),
        }))
    }
}
