//! Verification: the stateless checks, then the token's domain, the nonce and the balance on chain.

//! Verification and exactly-once settlement, independent of HTTP.

use std::time::Instant;

use alloy_primitives::{Address, B256};
use alloy_sol_types::{SolCall, sol};
use bursar_chain::{CallOutcome, CallRequest, ChainError, Token};
use bursar_contracts::{describe_revert, revert_reason};
use bursar_protocol::exact_evm::{self, CheckedPayment, Invalid};
use bursar_protocol::{ChainAddress, FacilitatorRequest, Reason, VerifyResponse};

use crate::hooks::payer_of;
use crate::tokens::{self, ProbeFailure, TokenSupport};

use super::{LocalFacilitator, now_seconds};

impl LocalFacilitator {
    /// Verifies a payment: the hooks' `before_verify`, every stateless check, then the token's
    /// domain, the nonce and the balance; `after_verify` sees the answer.
    #[tracing::instrument(name = "facilitator.verify", skip_all, fields(
        network = %request.requirements.network.caip2(), outcome = tracing::field::Empty,
        reason = tracing::field::Empty,
    ))]
    pub async fn verify(&self, request: &FacilitatorRequest) -> VerifyResponse {
        let started = Instant::now();
        let hooks = self.hooks();
        let response = match hooks.before_verify(request).await {
            Ok(()) => self.verify_unhooked(request).await,
            Err(refusal) => VerifyResponse::invalid(
                refusal.reason,
                refusal.message,
                payer_of(request).map(ChainAddress::from),
            ),
        };
        hooks.after_verify(request, &response).await;
        if let Some(catalog) = self.catalog() {
            catalog.recorder().verified(request, &response);
        }
        self.metrics.verified(&response, started.elapsed());
        response
    }

    pub(super) async fn verify_unhooked(&self, request: &FacilitatorRequest) -> VerifyResponse {
        match self.check(request).await {
            Ok(checked) => VerifyResponse::valid(checked.payer.into()),
            Err(invalid) => invalid_response(invalid),
        }
    }

    pub(super) async fn check(
        &self,
        request: &FacilitatorRequest,
    ) -> Result<CheckedPayment, Invalid> {
        if request.payload.version != request.version {
            return Err(Invalid::new(
                Reason::INVALID_X402_VERSION,
                "payload version differs from the request's",
            ));
        }
        let checked = exact_evm::check_payment(
            &request.payload,
            &request.requirements,
            self.chain.chain_id(),
            now_seconds(),
        )?;
        if let Some(assets) = &self.config.assets
            && !assets.contains(&checked.token)
        {
            return Err(Invalid {
                reason: Reason::INVALID_PAYMENT_REQUIREMENTS,
                message: format!("asset {} is not settled by this facilitator", checked.token),
                payer: Some(checked.payer),
            });
        }
        self.check_on_chain(request, &checked).await?;
        Ok(checked)
    }

    pub(super) async fn check_on_chain(
        &self,
        request: &FacilitatorRequest,
        checked: &CheckedPayment,
    ) -> Result<(), Invalid> {
        let payer = checked.payer;
        let authorization = &checked.payload.authorization;
        let known = self.token_support.known(checked.token);
        if let Some(TokenSupport::Unsupported { why }) = &known {
            return Err(unsupported_token(why, payer));
        }
        let token = Token::new(self.chain.clone(), checked.token);
        let chain_failure = |error: ChainError| chain_failure(error, payer);
        let (separator, reading) = match &self.reads {
            Some(reads) => {
                tokio::join!(
                    self.domain_separator(checked.token),
                    reads.read(checked.token, payer, authorization.nonce),
                )
            }
            None => {
                let (separator, used, balance) = tokio::join!(
                    self.domain_separator(checked.token),
                    token.authorization_state(payer, authorization.nonce),
                    token.balance_of(payer),
                );
                let reading = match (used, balance) {
                    (Ok(used), Ok(balance)) => Ok(Some((balance, used))),
                    (Err(error), _) | (_, Err(error)) => Err(error),
                };
                (separator, reading)
            }
        };
        let (balance, used) = match reading {
            Ok(Some(answer)) => answer,
            failed => {
                return Err(self
                    .unreadable(checked, known.is_none(), failed.err())
                    .await);
            }
        };
        if let Some(on_chain) = separator.map_err(chain_failure)? {
            let (name, version) = request
                .requirements
                .eip712_name_version()
                .unwrap_or_default();
            let claimed =
                exact_evm::token_domain(name, version, checked.chain_id, checked.token).separator();
            if claimed != on_chain {
                return Err(Invalid {
                    reason: Reason::TOKEN_DOMAIN_MISMATCH,
                    message: format!(
                        "the token's EIP-712 domain is not name {name:?}, version {version:?}"
                    ),
                    payer: Some(payer),
                });
            }
        }
        if used {
            return Err(Invalid {
                reason: Reason::NONCE_ALREADY_USED,
                message: format!(
                    "authorization nonce {} was already used or cancelled",
                    authorization.nonce
                ),
                payer: Some(payer),
            });
        }
        if balance < authorization.value.atomic() {
            return Err(Invalid {
                reason: Reason::INSUFFICIENT_FUNDS,
                message: format!(
                    "payer balance {balance} is below the amount {}",
                    authorization.value
                ),
                payer: Some(payer),
            });
        }
        if known.is_none() {
            self.learn_token_support(checked).await?;
        }
        Ok(())
    }

    /// The refusal of a payment whose chain reads failed (`error`, or `None` when the token did
    /// not answer a grouped read). For a token not known yet, whether it has EIP-3009 at all is
    /// found out first, and kept.
    pub(super) async fn unreadable(
        &self,
        checked: &CheckedPayment,
        unknown: bool,
        error: Option<ChainError>,
    ) -> Invalid {
        let payer = checked.payer;
        let read_error = error.unwrap_or_else(|| {
            ChainError::Reverted("the token did not answer balanceOf / authorizationState".into())
        });
        if !unknown {
            return chain_failure(read_error, payer);
        }
        let missing = tokens::missing_eip3009(
            self.chain.as_ref(),
            checked.token,
            payer,
            checked.payload.authorization.nonce,
        )
        .await;
        match missing {
            Ok(Some(why)) => {
                tracing::warn!(token = %checked.token, %why, "asset refused");
                match self
                    .token_support
                    .learn(checked.token, TokenSupport::Unsupported { why })
                {
                    TokenSupport::Unsupported { why } => unsupported_token(&why, payer),
                    TokenSupport::Settles { .. } => chain_failure(read_error, payer),
                }
            }
            Ok(None) => chain_failure(read_error, payer),
            Err(error) => chain_failure(error, payer),
        }
    }

    /// The first payment in a token whose support is unknown finds it out (see [`crate::tokens`]):
    /// `Err` refuses this payment, for what was learned or for an inconclusive probe.
    pub(super) async fn learn_token_support(
        &self,
        checked: &CheckedPayment,
    ) -> Result<(), Invalid> {
        let payer = checked.payer;
        let authorization = &checked.payload.authorization;
        let support = self
            .token_support
            .get_or_probe(checked.token, move || async move {
                let support = tokens::probe_settlement(
                    self.chain.as_ref(),
                    self.sender.address(),
                    checked.token,
                    authorization,
                    &checked.payload.signature,
                )
                .await?;
                tracing::info!(token = %checked.token, support = ?support, "learned what the asset supports");
                Ok(support)
            })
            .await;
        match support {
            Ok(TokenSupport::Settles { .. }) => Ok(()),
            Ok(TokenSupport::Unsupported { why }) => Err(unsupported_token(&why, payer)),
            Err(ProbeFailure::Reverted(data)) => Err(Invalid {
                reason: revert_reason(&data).unwrap_or(Reason::SIMULATION_FAILED),
                message: format!(
                    "transferWithAuthorization would revert: {}",
                    describe_revert(&data)
                ),
                payer: Some(payer),
            }),
            Err(ProbeFailure::Chain(error)) => Err(chain_failure(error, payer)),
        }
    }

    /// What this facilitator learned about `token` (see [`crate::tokens`]); `None` until a
    /// payment in it was verified far enough to find out.
    pub fn token_support(&self, token: Address) -> Option<TokenSupport> {
        self.token_support.known(token)
    }

    /// The token's `DOMAIN_SEPARATOR()`, cached; `None` when the token does not expose one.
    pub(super) async fn domain_separator(
        &self,
        token: Address,
    ) -> Result<Option<B256>, ChainError> {
        if let Some(cached) = self.domain_separators.read().expect("lock").get(&token) {
            return Ok(*cached);
        }
        let outcome = self
            .chain
            .call(CallRequest {
                to: Some(token),
                data: DOMAIN_SEPARATORCall {}.abi_encode().into(),
                ..Default::default()
            })
            .await?;
        let separator = match outcome {
            CallOutcome::Success(output) => DOMAIN_SEPARATORCall::abi_decode_returns(&output).ok(),
            CallOutcome::Revert(_) => None,
        };
        self.domain_separators
            .write()
            .expect("lock")
            .insert(token, separator);
        Ok(separator)
    }
}

sol! {
    function DOMAIN_SEPARATOR() external view returns (bytes32);
}

pub(super) fn chain_failure(error: ChainError, payer: Address) -> Invalid {
    Invalid {
        reason: Reason::UNEXPECTED_VERIFY_ERROR,
        message: format!("could not read the chain: {error}"),
        payer: Some(payer),
    }
}

pub(super) fn unsupported_token(why: &str, payer: Address) -> Invalid {
    Invalid {
        reason: Reason::UNSUPPORTED_TOKEN,
        message: format!("{why}; this facilitator cannot settle payments in it"),
        payer: Some(payer),
    }
}

pub(super) fn invalid_response(invalid: Invalid) -> VerifyResponse {
    VerifyResponse::invalid(
        invalid.reason,
        invalid.message,
        invalid.payer.map(ChainAddress::from),
    )
}
