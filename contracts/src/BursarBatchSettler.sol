// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @notice EIP-3009's own `transferWithAuthorization`, with the signature as `(v, r, s)`: every
/// EIP-3009 token has it.
interface IERC3009 {
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external;
}

/// @notice The `bytes signature` overload (Circle's USDC v2.2+, BursarUSD), which also takes
/// ERC-1271 and ERC-6492 signatures of smart wallets. Tokens that follow the EIP to the letter do
/// not have it.
interface IERC3009Bytes {
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external;
}

/// @title BursarBatchSettler
/// @notice Settles many EIP-3009 `transferWithAuthorization`s in one transaction. Each item runs in
/// its own call inside try/catch, so one bad item (used nonce, expired, bad signature, empty
/// balance) never reverts the others; every item emits exactly one event, `ItemSettled` or
/// `ItemFailed` (with the token's revert data), so the sender learns each item's outcome from the
/// receipt alone.
///
/// Anyone may call `settle`: the payers' signatures are the only authority, and they name the
/// payee and the amount, so a caller can move nothing a payer did not sign. The contract holds no
/// funds, no roles and no state. A hostile caller can at most submit an authorization first (from
/// this contract or straight to the token); the facilitator's batch item then fails with
/// `AuthorizationAlreadyUsed` while the payee is paid exactly once by the other transaction, and
/// the facilitator records the truth it reads from the events and `authorizationState`.
/// Each item's call gets at most `ITEM_GAS_MAX` gas, so an item whose signature check is
/// expensive (an ERC-1271 wallet) cannot starve the rest of the batch.
///
/// A 65-byte signature is an EOA's `r || s || v` and goes to EIP-3009's own `(v, r, s)` function,
/// which every EIP-3009 token has; a `v` of 0 or 1 is passed as 27 or 28 (what `ecrecover`
/// accepts), any other `v` unchanged. Every other signature (ERC-1271, ERC-6492) goes to the
/// `bytes signature` overload, which only such tokens as USDC v2.2+ have.
contract BursarBatchSettler {
    /// @notice The most items one call settles.
    uint256 public constant ITEMS_MAX = 256;
    /// @notice Gas forwarded to each item's `transferWithAuthorization`.
    uint256 public constant ITEM_GAS_MAX = 300_000;

    struct Item {
        address token;
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
        bytes signature;
    }

    /// @notice Item `index` moved `value` from `from` to `to`.
    event ItemSettled(uint256 indexed index, address indexed token, address indexed from, bytes32 nonce);
    /// @notice Item `index` did not settle; `reason` is the token's revert data (empty when the
    /// token address has no code or the call ran out of gas without data).
    event ItemFailed(uint256 indexed index, address indexed token, address indexed from, bytes32 nonce, bytes reason);

    /// @notice `settle` was called with no items.
    error NoItems();
    /// @notice `settle` was called with more than `ITEMS_MAX` items.
    error TooManyItems(uint256 count, uint256 max);

    /// @notice Settles every item it can; returns how many settled.
    function settle(Item[] calldata items) external returns (uint256 settled) {
        uint256 count = items.length;
        if (count == 0) {
            revert NoItems();
        }
        if (count > ITEMS_MAX) {
            revert TooManyItems(count, ITEMS_MAX);
        }
        for (uint256 i = 0; i < count; ++i) {
            Item calldata item = items[i];
            // A call to an address without code would revert the whole batch (Solidity checks
            // code size before an external call that returns nothing): fail the item instead.
            if (item.token.code.length == 0) {
                emit ItemFailed(i, item.token, item.from, item.nonce, "");
                continue;
            }
            bool ok;
            bytes memory reason;
            if (item.signature.length == 65) {
                (ok, reason) = _transferVrs(item);
            } else {
                (ok, reason) = _transferBytes(item);
            }
            if (ok) {
                ++settled;
                emit ItemSettled(i, item.token, item.from, item.nonce);
            } else {
                emit ItemFailed(i, item.token, item.from, item.nonce, reason);
            }
        }
    }

    /// The item through EIP-3009's `(v, r, s)` function; its signature is 65 bytes `r || s || v`.
    function _transferVrs(Item calldata item) private returns (bool ok, bytes memory reason) {
        bytes32 r = bytes32(item.signature[0:32]);
        bytes32 s = bytes32(item.signature[32:64]);
        uint8 v = uint8(item.signature[64]);
        if (v < 2) {
            v += 27;
        }
        try IERC3009(item.token).transferWithAuthorization{gas: ITEM_GAS_MAX}(
            item.from, item.to, item.value, item.validAfter, item.validBefore, item.nonce, v, r, s
        ) {
            ok = true;
        } catch (bytes memory data) {
            reason = data;
        }
    }

    /// The item through the `bytes signature` overload.
    function _transferBytes(Item calldata item) private returns (bool ok, bytes memory reason) {
        try IERC3009Bytes(item.token).transferWithAuthorization{gas: ITEM_GAS_MAX}(
            item.from, item.to, item.value, item.validAfter, item.validBefore, item.nonce, item.signature
        ) {
            ok = true;
        } catch (bytes memory data) {
            reason = data;
        }
    }
}
