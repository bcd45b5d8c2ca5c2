//! Reading discovery catalogs (x402 Bazaar, `GET /discovery/resources`): `bursar discover` and
//! the `search` tool of `bursar mcp`.

use anyhow::Result;
use serde_json::{Value, json};

use crate::pay::failure;

/// Most listings asked of one catalog, and returned.
pub const LISTINGS_MAX: usize = 100;

/// What a search found: the matching listings (as the catalogs list them), and the catalogs that
/// could not be read, with why.
pub struct Found {
    pub items: Vec<Value>,
    pub unreadable: Vec<Value>,
}

impl Found {
    pub fn to_json(&self) -> Value {
        json!({"items": self.items, "unreadable": self.unreadable})
    }
}

/// The listings of `catalogs` (of `kind`, `http` or `mcp`, when given) whose text contains
/// `query` (case-insensitive; every listing when it is empty), at most `limit`, in catalog order.
pub async fn search(
    http: &reqwest::Client,
    catalogs: &[url::Url],
    query: &str,
    kind: Option<&str>,
    limit: usize,
) -> Found {
    let query = query.to_lowercase();
    let mut found = Found {
        items: Vec::new(),
        unreadable: Vec::new(),
    };
    for catalog in catalogs {
        let mut url = catalog.clone();
        url.set_path(&format!(
            "{}/discovery/resources",
            catalog.path().trim_end_matches('/')
        ));
        url.query_pairs_mut()
            .append_pair("limit", &LISTINGS_MAX.to_string());
        if let Some(kind) = kind {
            url.query_pairs_mut().append_pair("type", kind);
        }
        let read = async {
            let response = http.get(url.clone()).send().await?.error_for_status()?;
            response.json::<Value>().await
        };
        match read.await {
            Ok(document) => {
                let listed = document["items"].as_array().cloned().unwrap_or_default();
                found.items.extend(listed.into_iter().filter(|item| {
                    query.is_empty() || item.to_string().to_lowercase().contains(&query)
                }));
            }
            Err(error) => found
                .unreadable
                .push(json!({"catalog": catalog.as_str(), "error": error.to_string()})),
        }
    }
    found.items.truncate(limit.min(LISTINGS_MAX));
    found
}

#[derive(clap::Args)]
pub struct DiscoverArgs {
    /// Words to look for in the listings (every listing when left out).
    #[arg(default_value = "")]
    pub query: String,
    /// A facilitator whose catalog to read (its base URL; repeatable).
    #[arg(
        long = "catalog",
        env = "BURSAR_CATALOGS",
        value_delimiter = ',',
        required = true
    )]
    pub catalogs: Vec<url::Url>,
    /// Only listings of this kind.
    #[arg(long = "type", value_parser = ["http", "mcp"])]
    pub kind: Option<String>,
    /// At most this many listings (1 to 100).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub limit: u16,
    /// Print the listings as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `bursar discover`: what the catalogs list, one line per listing (resource, kind, the first way
/// to pay, description), or JSON. Exit 1 when no catalog could be read.
pub async fn discover(args: DiscoverArgs) -> Result<()> {
    let found = search(
        &reqwest::Client::new(),
        &args.catalogs,
        &args.query,
        args.kind.as_deref(),
        usize::from(args.limit),
    )
    .await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found.to_json())?);
    } else {
        for item in &found.items {
            let offer = &item["accepts"][0];
            let price = match (offer["amount"].as_str(), offer["network"].as_str()) {
                (Some(amount), Some(network)) => format!("{amount} atomic on {network}"),
                _ => "-".into(),
            };
            let description = item["metadata"]["description"]
                .as_str()
                .or_else(|| offer["description"].as_str())
                .unwrap_or_default();
            println!(
                "{:<48} {:<4} {:<32} {description}",
                item["resource"].as_str().unwrap_or("?"),
                item["type"].as_str().unwrap_or("?"),
                price
            );
        }
        for unreadable in &found.unreadable {
            eprintln!(
                "warning: catalog {} could not be read: {}",
                unreadable["catalog"].as_str().unwrap_or("?"),
                unreadable["error"].as_str().unwrap_or("?")
            );
        }
    }
    if found.unreadable.len() == args.catalogs.len() {
        return Err(failure(
            crate::exit::FAILURE,
            "no catalog could be read; check the --catalog URLs".into(),
        ));
    }
    Ok(())
}
