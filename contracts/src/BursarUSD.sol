// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";

/// @title BursarUSD
/// @notice A USDC-like development token: 6 decimals, an owner who can mint (for faucets), and
/// EIP-3009 transfers by signed authorization, which is what x402's `exact` scheme settles with.
///
/// The EIP-712 domain is `{name: <token name>, version: "2", chainId, verifyingContract: this}`,
/// the same shape as Circle's FiatToken v2, and is published through ERC-5267 `eip712Domain()`.
/// The token name must fit in 31 bytes (OpenZeppelin's EIP712 stores it as a short string).
///
/// Authorization rules follow FiatToken v2: an authorization is usable strictly after
/// `validAfter` and strictly before `validBefore`, each `(authorizer, nonce)` pair is usable
/// once (using or canceling it consumes it), and the signature must be valid for the
/// authorizer. EOAs sign with 65-byte `r || s || v` (v = 27 or 28; upper-half `s` values are
/// refused); an authorizer that has code is asked through ERC-1271 `isValidSignature`.
///
/// Failures revert with the custom errors declared below (EIP-3009 paths) or OpenZeppelin's
/// custom errors (`ERC20InsufficientBalance`, `ERC20InvalidReceiver`,
/// `OwnableUnauthorizedAccount`, ...). No string reasons are used.
contract BursarUSD is ERC20, Ownable, EIP712 {
    /// keccak256("TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)")
    bytes32 public constant TRANSFER_WITH_AUTHORIZATION_TYPEHASH = keccak256(
        "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );

    /// keccak256("ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)")
    bytes32 public constant RECEIVE_WITH_AUTHORIZATION_TYPEHASH = keccak256(
        "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );

    /// keccak256("CancelAuthorization(address authorizer,bytes32 nonce)")
    bytes32 public constant CANCEL_AUTHORIZATION_TYPEHASH =
        keccak256("CancelAuthorization(address authorizer,bytes32 nonce)");

    /// Consumed authorization nonces, per authorizer (used or canceled).
    mapping(address authorizer => mapping(bytes32 nonce => bool consumed)) private _authorizationStates;

    /// An authorization was used to move funds.
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);

    /// An authorization was canceled before use.
    event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);

    /// `block.timestamp` is not yet greater than `validAfter`.
    error AuthorizationNotYetValid(uint256 validAfter, uint256 blockTimestamp);

    /// `block.timestamp` is not less than `validBefore`.
    error AuthorizationExpired(uint256 validBefore, uint256 blockTimestamp);

    /// The nonce was already used or canceled by this authorizer.
    error AuthorizationAlreadyUsed(address authorizer, bytes32 nonce);

    /// The signature is not a valid signature of the authorization by `authorizer`.
    error InvalidAuthorizationSignature(address authorizer);

    /// `receiveWithAuthorization` was called by someone other than the payee.
    error CallerMustBePayee(address caller, address payee);

    /// @param name_ token name, also the EIP-712 domain name (at most 31 bytes)
    /// @param symbol_ token symbol
    /// @param initialOwner the account allowed to mint and to transfer ownership
    constructor(string memory name_, string memory symbol_, address initialOwner)
        ERC20(name_, symbol_)
        EIP712(name_, "2")
        Ownable(initialOwner)
    {}

    /// Six decimals, like USDC.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// The EIP-712 domain version, "2" (FiatToken v2 exposes the same getter).
    function version() external pure returns (string memory) {
        return "2";
    }

    /// The EIP-712 domain separator for the current chain.
    // solhint-disable-next-line func-name-mixedcase
    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// Creates `amount` new tokens for `to`. Owner only.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }

    /// Whether `nonce` has been used or canceled by `authorizer`.
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool) {
        return _authorizationStates[authorizer][nonce];
    }

    /// Moves `value` from `from` to `to` with `from`'s signed authorization; anyone may submit it.
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
    ) external {
        _transferWithAuthorization(
            TRANSFER_WITH_AUTHORIZATION_TYPEHASH,
            from,
            to,
            value,
            validAfter,
            validBefore,
            nonce,
            abi.encodePacked(r, s, v)
        );
    }

    /// As above, with the signature as bytes (65-byte `r || s || v`, or whatever an ERC-1271
    /// authorizer accepts).
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external {
        _transferWithAuthorization(
            TRANSFER_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce, signature
        );
    }

    /// Like `transferWithAuthorization`, but only the payee `to` may submit it, which stops a
    /// front-runner from consuming an authorization meant for a contract's deposit flow.
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        _requirePayee(to);
        _transferWithAuthorization(
            RECEIVE_WITH_AUTHORIZATION_TYPEHASH,
            from,
            to,
            value,
            validAfter,
            validBefore,
            nonce,
            abi.encodePacked(r, s, v)
        );
    }

    /// As above, with the signature as bytes.
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external {
        _requirePayee(to);
        _transferWithAuthorization(
            RECEIVE_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce, signature
        );
    }

    /// Consumes an unused nonce so the authorization carrying it can never be used.
    function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external {
        _cancelAuthorization(authorizer, nonce, abi.encodePacked(r, s, v));
    }

    /// As above, with the signature as bytes.
    function cancelAuthorization(address authorizer, bytes32 nonce, bytes calldata signature) external {
        _cancelAuthorization(authorizer, nonce, signature);
    }

    function _transferWithAuthorization(
        bytes32 typeHash,
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) private {
        if (block.timestamp <= validAfter) {
            revert AuthorizationNotYetValid(validAfter, block.timestamp);
        }
        if (block.timestamp >= validBefore) {
            revert AuthorizationExpired(validBefore, block.timestamp);
        }
        _requireUnused(from, nonce);
        bytes32 structHash = keccak256(abi.encode(typeHash, from, to, value, validAfter, validBefore, nonce));
        _requireSignedBy(from, structHash, signature);

        _authorizationStates[from][nonce] = true;
        emit AuthorizationUsed(from, nonce);
        _transfer(from, to, value);
    }

    function _cancelAuthorization(address authorizer, bytes32 nonce, bytes memory signature) private {
        _requireUnused(authorizer, nonce);
        bytes32 structHash = keccak256(abi.encode(CANCEL_AUTHORIZATION_TYPEHASH, authorizer, nonce));
        _requireSignedBy(authorizer, structHash, signature);

        _authorizationStates[authorizer][nonce] = true;
        emit AuthorizationCanceled(authorizer, nonce);
    }

    function _requirePayee(address to) private view {
        if (msg.sender != to) {
            revert CallerMustBePayee(msg.sender, to);
        }
    }

    function _requireUnused(address authorizer, bytes32 nonce) private view {
        if (_authorizationStates[authorizer][nonce]) {
            revert AuthorizationAlreadyUsed(authorizer, nonce);
        }
    }

    function _requireSignedBy(address signer, bytes32 structHash, bytes memory signature) private view {
        if (!SignatureChecker.isValidSignatureNow(signer, _hashTypedDataV4(structHash), signature)) {
            revert InvalidAuthorizationSignature(signer);
        }
    }
}
