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
/// every word of `query` (case-insensitive; every listing when it is empty), merged: a resource
/// listed by several catalogs (same URL, kind, and method or tool) appears once, in the order
/// first seen, with `catalogs` naming every catalog that lists it and `reputations` what each of
/// them knows of it. At most `limit`.
pub async fn search(
    http: &reqwest::Client,
    catalogs: &[url::Url],
    query: &str,
    kind: Option<&str>,
    limit: usize,
) -> Found {
    let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
    let mut found = Found {
        items: Vec::new(),
        unreadable: Vec::new(),
    };
    let mut seen: Vec<(String, String, String)> = Vec::new();
    for catalog in catalogs {
        let mut url = catalog.clone();
        url.set_path(&format!(
            "{}/discovery/resources",
            catalog.path().trim_end_matches('/')
        ));
        url.query_pairs_mut()
            .append_pair("limit", &LISTINGS_MAX.to_string());
        if !query.trim().is_empty() {
            // Bursar's catalogs search server-side; others ignore `q` (filtered below).
            url.query_pairs_mut().append_pair("q", query.trim());
        }
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
                for item in listed {
                    let text = item.to_string().to_lowercase();
                    if !words.iter().all(|word| text.contains(word.as_str())) {
                        continue;
                    }
                    let key = (
                        item["resource"].as_str().unwrap_or_default().to_string(),
                        item["type"].as_str().unwrap_or_default().to_string(),
                        item["toolName"]
                            .as_str()
                            .or(item["method"].as_str())
                            .unwrap_or_default()
                            .to_string(),
                    );
                    let source =
                        json!({"catalog": catalog.as_str(), "reputation": item["reputation"]});
                    match seen.iter().position(|known| *known == key) {
                        Some(index) => {
                            let merged = &mut found.items[index];
                            if let Some(catalogs) = merged["catalogs"].as_array_mut() {
                                catalogs.push(json!(catalog.as_str()));
                            }
                            if let Some(reputations) = merged["reputations"].as_array_mut() {
                                reputations.push(source);
                            }
                        }
                        None => {
                            let mut item = item;
                            item["catalogs"] = json!([catalog.as_str()]);
                            item["reputations"] = json!([source]);
                            seen.push(key);
                            found.items.push(item);
                        }
                    }
                }
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
    /// Words every listing must contain (every listing when left out).
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
            let description = item["description"]
                .as_str()
                .or_else(|| item["metadata"]["description"].as_str())
                .or_else(|| offer["description"].as_str())
                .unwrap_or_default();
            let reputation = &item["reputation"];
            let standing = match reputation["settledCount"].as_u64() {
                Some(settled) => format!(
                    "{settled} settled, {} payers, {} bps failing",
                    reputation["distinctPayers"].as_u64().unwrap_or_default(),
                    reputation["failureRateBps"].as_u64().unwrap_or_default()
                ),
                None => "no reputation".into(),
            };
            println!(
                "{:<48} {:<4} {:<32} {:<40} {description}",
                item["resource"].as_str().unwrap_or("?"),
                item["type"].as_str().unwrap_or("?"),
                price,
                standing
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
