//! The catalog's HTTP API: `GET /discovery/resources`, `GET /discovery/search`,
//! `POST /discovery/reports`. Every error is a JSON body `{error, message}`.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bursar_protocol::discovery::{
    ListingPage, Pagination, PaymentReport, ResourceKind, normalized_resource, report_message,
    split_origin, template_matches,
};
use bursar_protocol::exact_evm::recover_signer;
use bursar_protocol::{Address, Amount, Network};
use bursar_store::catalog::{CatalogQuery, PaymentRef, ReportOutcome};
use serde::Deserialize;
use serde_json::json;

use crate::Catalog;
use crate::listing::listing_of;

/// Listings per page unless `limit` says otherwise, and the most one page holds.
pub const LISTING_LIMIT_DEFAULT: u64 = 20;
pub const LISTING_LIMIT_MAX: u64 = 100;
/// Listings of one origin considered for a `resource` lookup.
const RESOURCE_CANDIDATES_MAX: u64 = 1_000;
/// Largest report body.
const REPORT_BYTES_MAX: usize = 4 * 1024;

/// The catalog's routes (no state left to give).
pub fn router(catalog: Catalog) -> Router {
    Router::new()
        .route("/discovery/resources", get(resources))
        .route("/discovery/search", get(search))
        .route(
            "/discovery/reports",
            post(report).layer(DefaultBodyLimit::max(REPORT_BYTES_MAX)),
        )
        .with_state(catalog)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    #[serde(rename = "type")]
    kind: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
    cursor: Option<String>,
    pay_to: Option<String>,
    payee: Option<String>,
    scheme: Option<String>,
    network: Option<String>,
    asset: Option<String>,
    max_price: Option<String>,
    q: Option<String>,
    query: Option<String>,
    settled: Option<String>,
    extensions: Option<String>,
    resource: Option<String>,
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

/// A query that cannot be answered: a 400 saying why.
struct BadQuery(String);

impl IntoResponse for BadQuery {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, "invalid_query", self.0)
    }
}

fn bad_request(message: impl Into<String>) -> BadQuery {
    BadQuery(message.into())
}

fn number(name: &str, text: Option<&str>, default: u64, max: u64) -> Result<u64, BadQuery> {
    match text {
        None => Ok(default),
        Some(text) => match text.parse::<u64>() {
            Ok(value) if value <= max => Ok(value),
            _ => Err(bad_request(format!(
                "{name} must be a whole number from 0 to {max}"
            ))),
        },
    }
}

fn address(name: &str, text: Option<&str>) -> Result<Option<Address>, BadQuery> {
    text.map(|text| {
        text.parse::<Address>()
            .map_err(|_| bad_request(format!("{name} must be a 0x address")))
    })
    .transpose()
}

/// The store query `params` ask for, or the 400 saying what is wrong.
fn query_of(
    catalog: &Catalog,
    params: &Params,
    words: Option<&str>,
) -> Result<CatalogQuery, BadQuery> {
    let limit = number(
        "limit",
        params.limit.as_deref(),
        LISTING_LIMIT_DEFAULT,
        LISTING_LIMIT_MAX,
    )?;
    if limit == 0 {
        return Err(bad_request(format!(
            "limit must be from 1 to {LISTING_LIMIT_MAX}"
        )));
    }
    let offset = number(
        "offset",
        params.offset.as_deref().or(params.cursor.as_deref()),
        0,
        1_000_000_000,
    )?;
    let kind = match params.kind.as_deref() {
        None => None,
        Some(text) => {
            Some(ResourceKind::parse(text).ok_or_else(|| bad_request("type must be http or mcp"))?)
        }
    };
    let network = match params.network.as_deref() {
        None => None,
        Some(text) => Some(
            Network::parse(text)
                .map_err(|_| bad_request("network must be CAIP-2 (eip155:<id>) or a known name"))?
                .caip2(),
        ),
    };
    let pay_to = match (
        address("payTo", params.pay_to.as_deref())?,
        address("payee", params.payee.as_deref())?,
    ) {
        (Some(a), Some(b)) if a != b => return Err(bad_request("payTo and payee differ")),
        (a, b) => a.or(b),
    };
    let max_amount = params
        .max_price
        .as_deref()
        .map(|text| {
            text.parse::<Amount>()
                .map_err(|_| bad_request("maxPrice must be a decimal amount of atomic units"))
        })
        .transpose()?;
    let settled_only = match params.settled.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(bad_request("settled must be true or false")),
    };
    if params
        .extensions
        .as_deref()
        .is_some_and(|extension| extension != "bazaar")
    {
        // Only the bazaar extension is cataloged: nothing else can match.
        return Ok(CatalogQuery {
            limit: 0,
            seen_since_ms: i64::MAX,
            ..CatalogQuery::default()
        });
    }
    let resource = match params.resource.as_deref() {
        None => None,
        Some(text) => Some(
            normalized_resource(text)
                .ok_or_else(|| bad_request("resource must be an http(s) or mcp URL"))?,
        ),
    };
    let words = words.unwrap_or_default();
    if words.len() > 512 {
        return Err(bad_request("the query is longer than 512 bytes"));
    }
    Ok(CatalogQuery {
        words: words.split_whitespace().map(str::to_string).collect(),
        kind,
        scheme: params.scheme.clone(),
        network,
        asset: address("asset", params.asset.as_deref())?,
        pay_to,
        max_amount,
        settled_only,
        resource,
        seen_since_ms: catalog.seen_since_ms(crate::now_ms()),
        limit,
        offset,
    })
}

fn json_inert(value: serde_json::Value) -> Response {
    let mut response = axum::Json(value).into_response();
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn run(
    catalog: &Catalog,
    query: &CatalogQuery,
) -> Result<(u64, Vec<serde_json::Value>), Response> {
    if query.limit == 0 {
        return Ok((0, Vec::new()));
    }
    catalog.recorder().flush().await;
    if let Some(resource) = &query.resource {
        // Candidates of the resource's origin, narrowed to those whose template fits, then paged.
        let candidates = CatalogQuery {
            limit: RESOURCE_CANDIDATES_MAX,
            offset: 0,
            ..query.clone()
        };
        let page = search_page(catalog, &candidates).await?;
        let path = split_origin(resource).map(|(_, path)| path).unwrap_or("/");
        let fitting: Vec<_> = page
            .listings
            .iter()
            .filter(|record| match &record.route_template {
                None => &record.resource == resource,
                Some(template) => template_matches(template, path),
            })
            .collect();
        let total = fitting.len() as u64;
        let items = fitting
            .into_iter()
            .skip(usize::try_from(query.offset).unwrap_or(usize::MAX))
            .take(usize::try_from(query.limit).unwrap_or(usize::MAX))
            .map(|record| serde_json::to_value(listing_of(record)).unwrap_or_default())
            .collect();
        return Ok((total, items));
    }
    let page = search_page(catalog, query).await?;
    let items = page
        .listings
        .iter()
        .map(|record| serde_json::to_value(listing_of(record)).unwrap_or_default())
        .collect();
    Ok((page.total, items))
}

async fn search_page(
    catalog: &Catalog,
    query: &CatalogQuery,
) -> Result<bursar_store::catalog::CatalogPage, Response> {
    catalog.store().search(query).await.map_err(|store_error| {
        tracing::warn!(%store_error, "catalog: search failed");
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "catalog_unavailable",
            "the catalog's database could not be read; try again",
        )
    })
}

async fn resources(
    State(catalog): State<Catalog>,
    params: Result<Query<Params>, QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return bad_request("the query string could not be read").into_response();
    };
    let words = params.q.as_deref().or(params.query.as_deref());
    let query = match query_of(&catalog, &params, words) {
        Ok(query) => query,
        Err(bad) => return bad.into_response(),
    };
    match run(&catalog, &query).await {
        Ok((total, items)) => {
            let page = json!({
                "x402Version": 2,
                "items": items,
                "pagination": Pagination { limit: query.limit, offset: query.offset, total },
            });
            debug_assert!(serde_json::from_value::<ListingPage>(page.clone()).is_ok());
            json_inert(page)
        }
        Err(response) => response,
    }
}

async fn search(
    State(catalog): State<Catalog>,
    params: Result<Query<Params>, QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return bad_request("the query string could not be read").into_response();
    };
    let Some(words) = params.query.as_deref().or(params.q.as_deref()) else {
        return bad_request("query is required").into_response();
    };
    let query = match query_of(&catalog, &params, Some(words)) {
        Ok(query) => query,
        Err(bad) => return bad.into_response(),
    };
    match run(&catalog, &query).await {
        Ok((total, items)) => {
            let next = query.offset + items.len() as u64;
            let cursor = (next < total).then(|| next.to_string());
            json_inert(json!({
                "x402Version": 2,
                "resources": items,
                "partialResults": cursor.is_some(),
                "pagination": {"limit": query.limit, "cursor": cursor},
            }))
        }
        Err(response) => response,
    }
}

async fn report(State(catalog): State<Catalog>, body: axum::body::Bytes) -> Response {
    let report: PaymentReport = match serde_json::from_slice(&body) {
        Ok(report) => report,
        Err(parse_error) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_report",
                format!("the report could not be read: {parse_error}"),
            );
        }
    };
    let network = match Network::parse(&report.network) {
        Ok(network) => network.caip2(),
        Err(_) => {
            return error(StatusCode::BAD_REQUEST, "invalid_report", "unknown network");
        }
    };
    let message = report_message(
        report.kind,
        &network,
        report.asset,
        report.payer,
        report.nonce,
    );
    let digest = alloy_primitives::eip191_hash_message(message.as_bytes());
    match recover_signer(&digest, &report.signature) {
        Ok(signer) if signer == report.payer => {}
        _ => {
            return error(
                StatusCode::FORBIDDEN,
                "invalid_report_signature",
                "the report must be signed by the payment's payer (EIP-191 over the report message)",
            );
        }
    }
    let payment = PaymentRef {
        network,
        asset: report.asset,
        payer: report.payer,
        nonce: report.nonce,
    };
    // What the facilitator saw before this report is written first.
    catalog.recorder().flush().await;
    match catalog
        .store()
        .report(&payment, report.kind, crate::now_ms())
        .await
    {
        Ok(ReportOutcome::Counted) => axum::Json(json!({"counted": true})).into_response(),
        Ok(ReportOutcome::AlreadyReported) => {
            axum::Json(json!({"counted": false, "reason": "already_reported"})).into_response()
        }
        Ok(ReportOutcome::UnknownPayment) => error(
            StatusCode::NOT_FOUND,
            "unknown_payment",
            "this catalog settled no payment under that authorization",
        ),
        Err(store_error) => {
            tracing::warn!(%store_error, "catalog: report not recorded");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "catalog_unavailable",
                "the report could not be recorded; try again",
            )
        }
    }
}
