// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title Eip3009OnlyToken
/// @notice A test token with EIP-3009 exactly as the EIP specifies it and nothing more: the
/// `(uint8 v, bytes32 r, bytes32 s)` forms of `transferWithAuthorization`,
/// `receiveWithAuthorization` and `cancelAuthorization`, `authorizationState`, and the events
/// `AuthorizationUsed` / `AuthorizationCanceled`. It has no `bytes signature` overloads and no
/// ERC-1271 support: the signer is whatever `ecrecover` returns, so only EOA signatures with
/// v = 27 or 28 are accepted. Many EIP-3009 tokens (and USDC before FiatToken v2.2) look like
/// this, which is why Bursar's tests settle against it.
///
/// The EIP-712 domain is `{name, version, chainId, verifyingContract}` with name and version
/// chosen at deployment; `DOMAIN_SEPARATOR()` is computed for the current chain on every call.
/// Failures are revert strings, as in the EIP's examples. The owner may `mint` (tests fund
/// payers with it).
contract Eip3009OnlyToken is ERC20, Ownable {
    /// keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");

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

    bytes32 private immutable _nameHash;
    bytes32 private immutable _versionHash;

    /// Nonces used or canceled, per authorizer.
    mapping(address authorizer => mapping(bytes32 nonce => bool done)) private _authorizationStates;

    /// The authorization `nonce` of `authorizer` moved funds.
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);

    /// The authorization `nonce` of `authorizer` was canceled before use.
    event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);

    /// @param name_ token name and EIP-712 domain name
    /// @param version_ EIP-712 domain version
    /// @param initialOwner the account allowed to mint
    constructor(string memory name_, string memory version_, address initialOwner)
        ERC20(name_, "E3009")
        Ownable(initialOwner)
    {
        _nameHash = keccak256(bytes(name_));
        _versionHash = keccak256(bytes(version_));
    }

    /// Six decimals, like most dollar tokens.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// Creates `amount` new tokens for `to`. Owner only.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }

    /// The EIP-712 domain separator on the current chain.
    // solhint-disable-next-line func-name-mixedcase
    function DOMAIN_SEPARATOR() public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, _nameHash, _versionHash, block.chainid, address(this)));
    }

    /// Whether `authorizer` has used or canceled `nonce`.
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool) {
        return _authorizationStates[authorizer][nonce];
    }

    /// Moves `value` from `from` to `to` with `from`'s signature; anyone may submit it.
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
        _useAuthorization(TRANSFER_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce, v, r, s);
    }

    /// As `transferWithAuthorization`, but only the payee `to` may submit it.
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
        require(to == msg.sender, "EIP3009: caller must be the payee");
        _useAuthorization(RECEIVE_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce, v, r, s);
    }

    /// Consumes `authorizer`'s unused `nonce` so no authorization carrying it can be used.
    function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external {
        require(!_authorizationStates[authorizer][nonce], "EIP3009: authorization is used or canceled");
        bytes32 structHash = keccak256(abi.encode(CANCEL_AUTHORIZATION_TYPEHASH, authorizer, nonce));
        require(_signer(structHash, v, r, s) == authorizer, "EIP3009: invalid signature");
        _authorizationStates[authorizer][nonce] = true;
        emit AuthorizationCanceled(authorizer, nonce);
    }

    function _useAuthorization(
        bytes32 typeHash,
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) private {
        require(block.timestamp > validAfter, "EIP3009: authorization is not yet valid");
        require(block.timestamp < validBefore, "EIP3009: authorization is expired");
        require(!_authorizationStates[from][nonce], "EIP3009: authorization is used or canceled");
        bytes32 structHash = keccak256(abi.encode(typeHash, from, to, value, validAfter, validBefore, nonce));
        require(_signer(structHash, v, r, s) == from, "EIP3009: invalid signature");
        _authorizationStates[from][nonce] = true;
        emit AuthorizationUsed(from, nonce);
        _transfer(from, to, value);
    }

    /// The address that signed the typed data `structHash` under this token's domain, or a
    /// value no authorizer has (zero) when the signature does not recover.
    function _signer(bytes32 structHash, uint8 v, bytes32 r, bytes32 s) private view returns (address signer) {
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", DOMAIN_SEPARATOR(), structHash));
        signer = ecrecover(digest, v, r, s);
        require(signer != address(0), "EIP3009: invalid signature");
    }
}
