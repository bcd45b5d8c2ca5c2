//! The facts a `[reputation]` rule needs, gathered before anything is signed: what each catalog
//! the rules in force name lists for the endpoint being paid, under the terms being paid.
//!
//! One `GET {catalog}/discovery/resources?resource=<url>&type=<kind>&limit=100` per catalog and
//! payment (Bursar's catalogs answer exactly that resource and the route templates of its
//! origin; other catalogs may ignore `resource`, and their first 100 listings are searched). A
//! listing counts only if it describes this call (resource, method or tool) **and** lists the
//! payee, network and asset being paid: a seller cannot borrow another's reputation by naming
//! its resource. A catalog that cannot be read within [`CATALOG_TIMEOUT`] is reported as such,
//! and the rule fails closed.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use alloy_signer::SignerSync;
use bursar_buyer::{Quote, RequestSpec};
use bursar_governance::{ListingFacts, ListingLookup, Policy};
use bursar_protocol::discovery::{Listing, ListingPage, PaymentReport, ReportKind, report_message};
use bursar_store::runtime::TransferRecord;

use super::Runtime;

/// How long a catalog has to answer.
pub const CATALOG_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest catalog answer read.
const CATALOG_BYTES_MAX: usize = 4 * 1024 * 1024;

fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(CATALOG_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    })
}

/// The resource URL, kind and operation a catalog would list this call under: for an MCP tool,
/// the seller's resource (`mcp://tool/<name>`) and the tool's name; for HTTP, the request's URL
/// and method.
pub(crate) fn listed_as(request: &RequestSpec, quote: &Quote) -> (String, &'static str, String) {
    match &request.tool {
        Some(tool) => (
            quote.required.resource.url.clone(),
            "mcp",
            tool.name.clone(),
        ),
        None => (
            request.url.to_string(),
            "http",
            request.method.as_str().to_string(),
        ),
    }
}

/// What each catalog named by the policies' `[reputation]` rules lists for this payment.
pub(crate) async fn lookups(
    policies: &[Policy],
    request: &RequestSpec,
    quote: &Quote,
) -> BTreeMap<url::Url, ListingLookup> {
    let mut found = BTreeMap::new();
    for rule in policies
        .iter()
        .filter_map(|policy| policy.reputation.as_ref())
    {
        if found.contains_key(&rule.catalog) {
            continue;
        }
        let lookup = lookup(&rule.catalog, request, quote).await;
        found.insert(rule.catalog.clone(), lookup);
    }
    found
}

async fn lookup(catalog: &url::Url, request: &RequestSpec, quote: &Quote) -> ListingLookup {
    let (resource, kind, operation) = listed_as(request, quote);
    let mut url = catalog.clone();
    url.set_path(&format!(
        "{}/discovery/resources",
        catalog.path().trim_end_matches('/')
    ));
    url.query_pairs_mut()
        .append_pair("resource", &resource)
        .append_pair("type", kind)
        .append_pair("limit", "100");
    let page = match read(url).await {
        Ok(page) => page,
        Err(why) => return ListingLookup::Unreadable(why),
    };
    let Some(asset) = quote.requirement.asset.evm() else {
        return ListingLookup::NotListed;
    };
    let network = quote.requirement.network.caip2();
    let listed: Option<&Listing> = page.items.iter().find(|listing| {
        listing.describes(
            &resource,
            &operation,
            &quote.authorization.to,
            &network,
            &asset,
        )
    });
    match listed.and_then(|listing| listing.reputation.as_ref()) {
        Some(reputation) => ListingLookup::Listed(ListingFacts {
            settled_count: reputation.settled_count,
            distinct_payers: reputation.distinct_payers,
            failure_rate_bps: reputation.failure_rate_bps,
        }),
        // Listed by a catalog that keeps no reputation: nothing settled that it knows of.
        None if listed.is_some() => ListingLookup::Listed(ListingFacts::default()),
        None => ListingLookup::NotListed,
    }
}

async fn read(url: url::Url) -> Result<ListingPage, String> {
    let response = http()
        .get(url)
        .send()
        .await
        .map_err(|error| format!("unreachable: {error}"))?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = response
        .bytes()
        .await
        .map_err(|error| format!("unreadable answer: {error}"))?;
    if body.len() > CATALOG_BYTES_MAX {
        return Err("answer too large".into());
    }
    serde_json::from_slice(&body).map_err(|error| format!("not a discovery page: {error}"))
}

impl Runtime {
    /// Reports `kind` about a paid transfer to the runtime's catalogs and to those its policies'
    /// `[reputation]` rules name, signed by the paying wallet (EIP-191 over
    /// [`report_message`]). In the background and best effort: a catalog that is down misses
    /// the report (logged); the payment is never affected. A catalog counts a report only for a
    /// payment it saw settled.
    pub(crate) fn report(&self, transfer: &TransferRecord, kind: ReportKind, policies: &[Policy]) {
        let mut catalogs: Vec<url::Url> = self.inner.config.catalogs.clone();
        for rule in policies
            .iter()
            .filter_map(|policy| policy.reputation.as_ref())
        {
            if !catalogs.contains(&rule.catalog) {
                catalogs.push(rule.catalog.clone());
            }
        }
        if catalogs.is_empty() {
            return;
        }
        let runtime = self.clone();
        let transfer = transfer.clone();
        tokio::spawn(async move {
            let signer = match runtime.signer(&transfer.wallet_id).await {
                Ok(signer) => signer,
                Err(error) => {
                    tracing::warn!(transfer = %transfer.id, %error, "catalog report not signed");
                    return;
                }
            };
            let network = transfer.network.caip2();
            let message = report_message(
                kind,
                &network,
                transfer.asset,
                transfer.payer,
                transfer.nonce,
            );
            let Ok(signature) = signer.sign_message_sync(message.as_bytes()) else {
                return;
            };
            let report = PaymentReport {
                kind,
                network,
                asset: transfer.asset,
                payer: transfer.payer,
                nonce: transfer.nonce,
                signature: signature.as_bytes().to_vec().into(),
            };
            for catalog in catalogs {
                let mut url = catalog.clone();
                url.set_path(&format!(
                    "{}/discovery/reports",
                    catalog.path().trim_end_matches('/')
                ));
                match http().post(url).json(&report).send().await {
                    Ok(response) => tracing::info!(
                        transfer = %transfer.id, catalog = %catalog, kind = kind.as_str(),
                        status = response.status().as_u16(), "reported to the catalog"
                    ),
                    Err(error) => tracing::warn!(
                        transfer = %transfer.id, catalog = %catalog, %error, "catalog report not delivered"
                    ),
                }
            }
        });
    }
}

/// What catalogs list for one payee, summed over its listings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PayeeStanding {
    pub listings: u64,
    pub settled: u64,
    pub worst_failure_rate_bps: u64,
    pub catalogs: Vec<String>,
}

impl PayeeStanding {
    pub fn describe(&self) -> String {
        format!(
            "{} listing(s) in {}: {} settled payments, worst failure rate {}.{:02}%",
            self.listings,
            self.catalogs.join(", "),
            self.settled,
            self.worst_failure_rate_bps / 100,
            self.worst_failure_rate_bps % 100
        )
    }
}

/// The payee's listings in `catalogs` (`?payTo=`), or `None` when no catalog lists it or none
/// could be read.
pub(crate) async fn payee_standing(catalogs: &[url::Url], payee: &str) -> Option<PayeeStanding> {
    let mut standing = PayeeStanding::default();
    for catalog in catalogs {
        let mut url = catalog.clone();
        url.set_path(&format!(
            "{}/discovery/resources",
            catalog.path().trim_end_matches('/')
        ));
        url.query_pairs_mut()
            .append_pair("payTo", payee)
            .append_pair("limit", "100");
        let Ok(page) = read(url).await else {
            continue;
        };
        let mut listed = false;
        for listing in &page.items {
            if !listing
                .accepts
                .iter()
                .any(|terms| terms.pay_to.as_str().eq_ignore_ascii_case(payee))
            {
                continue;
            }
            listed = true;
            standing.listings += 1;
            if let Some(reputation) = &listing.reputation {
                standing.settled += reputation.settled_count;
                standing.worst_failure_rate_bps = standing
                    .worst_failure_rate_bps
                    .max(reputation.failure_rate_bps);
            }
        }
        if listed {
            standing.catalogs.push(catalog.to_string());
        }
    }
    (standing.listings > 0).then_some(standing)
}
