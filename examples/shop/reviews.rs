//! `shop.reviews.v1.ReviewService`: canned reviews per product, plus a product id that
//! makes the backend fail so gateway fallbacks can be exercised.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tonic::{Request, Response, Status};

use super::Counters;
use super::faults::Faults;
use super::pb::shop::reviews::v1::review_service_server::{ReviewService, ReviewServiceServer};
use super::pb::shop::reviews::v1::{ListReviewsRequest, ListReviewsResponse, Review};

pub const SERVICE: &str = "shop.reviews.v1.ReviewService";

/// Asking for this product id answers UNAVAILABLE "reviews backend down".
pub const FAILING_PRODUCT_ID: &str = "boom";

/// The review service over canned data.
#[derive(Debug)]
pub struct Reviews {
    counters: Arc<Counters>,
    faults: Arc<Faults>,
}

/// A ready-to-serve review server.
pub fn server(counters: Arc<Counters>, faults: Arc<Faults>) -> ReviewServiceServer<Reviews> {
    ReviewServiceServer::new(Reviews { counters, faults })
}

/// Reviews of a catalog product: three for odd ids, two for even ids, none otherwise.
pub fn reviews_for(product_id: &str) -> Vec<Review> {
    let Ok(n) = product_id.parse::<u32>() else {
        return Vec::new();
    };
    if !(1..=5).contains(&n) {
        return Vec::new();
    }
    let canned = [
        ("alice", 5, "Does exactly what it says."),
        ("bob", 4, "Good value, shipping was quick."),
        ("carol", 3, "Fine, but the manual is thin."),
    ];
    let count = if n % 2 == 1 { 3 } else { 2 };
    canned
        .iter()
        .take(count)
        .zip(1..)
        .map(|(&(author, rating, text), i)| Review {
            id: format!("rev-{n}-{i}"),
            product_id: product_id.to_owned(),
            author: author.to_owned(),
            rating,
            text: text.to_owned(),
        })
        .collect()
}

#[tonic::async_trait]
impl ReviewService for Reviews {
    /// `average_rating` covers all reviews of the product; `page_size` > 0 only limits how
    /// many are returned.
    async fn list_reviews(
        &self,
        request: Request<ListReviewsRequest>,
    ) -> Result<Response<ListReviewsResponse>, Status> {
        self.counters.reviews.fetch_add(1, Ordering::Relaxed);
        let request = request.into_inner();
        self.faults.reviews.apply(&request.product_id).await?;
        if request.product_id == FAILING_PRODUCT_ID {
            return Err(Status::unavailable("reviews backend down"));
        }
        let mut reviews = reviews_for(&request.product_id);
        let average_rating = if reviews.is_empty() {
            0.0
        } else {
            let sum: i32 = reviews.iter().map(|r| r.rating).sum();
            f64::from(sum) / reviews.len() as f64
        };
        if let Ok(limit) = usize::try_from(request.page_size)
            && limit > 0
        {
            reviews.truncate(limit);
        }
        Ok(Response::new(ListReviewsResponse {
            reviews,
            average_rating,
        }))
    }
}
