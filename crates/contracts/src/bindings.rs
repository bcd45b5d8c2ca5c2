//! Typed bindings for BursarUSD, declared in Solidity syntax.
//!
//! The declarations mirror `contracts/src/BursarUSD.sol` and the OpenZeppelin parts it inherits.
//! A unit test compares them with the committed artifact's ABI (functions, events and errors), so
//! a change to the contract that is not reflected here fails the build's tests.
//!
//! Overloaded functions get numbered names from `sol!` in declaration order; the aliases at the
//! bottom of this module give them readable names.

use alloy_sol_types::sol;

sol! {
    /// The BursarUSD token: ERC-20 with 6 decimals, owner-only minting, ERC-5267 and EIP-3009.
    #[derive(Debug, PartialEq, Eq)]
    #[sol(abi)]
    contract BursarUSD {
        // ----- ERC-20 -----
        event Transfer(address indexed from, address indexed to, uint256 value);
        event Approval(address indexed owner, address indexed spender, uint256 value);

        error ERC20InsufficientBalance(address sender, uint256 balance, uint256 needed);
        error ERC20InvalidSender(address sender);
        error ERC20InvalidReceiver(address receiver);
        error ERC20InsufficientAllowance(address spender, uint256 allowance, uint256 needed);
        error ERC20InvalidApprover(address approver);
        error ERC20InvalidSpender(address spender);

        function name() external view returns (string);
        function symbol() external view returns (string);
        function decimals() external pure returns (uint8);
        function totalSupply() external view returns (uint256);
        function balanceOf(address account) external view returns (uint256);
        function transfer(address to, uint256 value) external returns (bool);
        function allowance(address owner, address spender) external view returns (uint256);
        function approve(address spender, uint256 value) external returns (bool);
        function transferFrom(address from, address to, uint256 value) external returns (bool);

        // ----- ownership and minting -----
        event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

        error OwnableUnauthorizedAccount(address account);
        error OwnableInvalidOwner(address owner);

        constructor(string name_, string symbol_, address initialOwner);

        function owner() external view returns (address);
        function transferOwnership(address newOwner) external;
        function renounceOwnership() external;
        function mint(address to, uint256 amount) external;

        // ----- EIP-712 / ERC-5267 -----
        event EIP712DomainChanged();

        /// A token name longer than 31 bytes makes deployment revert with this.
        error StringTooLong(string str);
        error InvalidShortString();

        function eip712Domain() external view returns (
            bytes1 fields,
            string name,
            string version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] extensions
        );
        function version() external pure returns (string);
        function DOMAIN_SEPARATOR() external view returns (bytes32);

        // ----- EIP-3009 -----
        event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
        event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);

        /// `block.timestamp` is not yet greater than `validAfter`.
        error AuthorizationNotYetValid(uint256 validAfter, uint256 blockTimestamp);
        /// `block.timestamp` is not less than `validBefore`.
        error AuthorizationExpired(uint256 validBefore, uint256 blockTimestamp);
        /// The nonce was already used or canceled by this authorizer.
        error AuthorizationAlreadyUsed(address authorizer, bytes32 nonce);
        /// The signature is not the authorizer's.
        error InvalidAuthorizationSignature(address authorizer);
        /// `receiveWithAuthorization` was not sent by the payee.
        error CallerMustBePayee(address caller, address payee);

        function TRANSFER_WITH_AUTHORIZATION_TYPEHASH() external view returns (bytes32);
        function RECEIVE_WITH_AUTHORIZATION_TYPEHASH() external view returns (bytes32);
        function CANCEL_AUTHORIZATION_TYPEHASH() external view returns (bytes32);

        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);

        function transferWithAuthorization(
            address from, address to, uint256 value, uint256 validAfter, uint256 validBefore,
            bytes32 nonce, bytes signature
        ) external;
        function transferWithAuthorization(
            address from, address to, uint256 value, uint256 validAfter, uint256 validBefore,
            bytes32 nonce, uint8 v, bytes32 r, bytes32 s
        ) external;

        function receiveWithAuthorization(
            address from, address to, uint256 value, uint256 validAfter, uint256 validBefore,
            bytes32 nonce, bytes signature
        ) external;
        function receiveWithAuthorization(
            address from, address to, uint256 value, uint256 validAfter, uint256 validBefore,
            bytes32 nonce, uint8 v, bytes32 r, bytes32 s
        ) external;

        function cancelAuthorization(address authorizer, bytes32 nonce, bytes signature) external;
        function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
    }
}

sol! {
    /// EIP-3009 typed data for `receiveWithAuthorization` (the payee submits it).
    #[derive(Debug, PartialEq, Eq)]
    struct ReceiveWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }

    /// EIP-3009 typed data for `cancelAuthorization`.
    #[derive(Debug, PartialEq, Eq)]
    struct CancelAuthorization {
        address authorizer;
        bytes32 nonce;
    }
}

/// `transferWithAuthorization(..., bytes signature)`.
pub type TransferWithAuthorizationBytesCall = BursarUSD::transferWithAuthorization_0Call;
/// `transferWithAuthorization(..., uint8 v, bytes32 r, bytes32 s)`.
pub type TransferWithAuthorizationVrsCall = BursarUSD::transferWithAuthorization_1Call;
/// `receiveWithAuthorization(..., bytes signature)`.
pub type ReceiveWithAuthorizationBytesCall = BursarUSD::receiveWithAuthorization_0Call;
/// `receiveWithAuthorization(..., uint8 v, bytes32 r, bytes32 s)`.
pub type ReceiveWithAuthorizationVrsCall = BursarUSD::receiveWithAuthorization_1Call;
/// `cancelAuthorization(authorizer, nonce, bytes signature)`.
pub type CancelAuthorizationBytesCall = BursarUSD::cancelAuthorization_0Call;
/// `cancelAuthorization(authorizer, nonce, uint8 v, bytes32 r, bytes32 s)`.
pub type CancelAuthorizationVrsCall = BursarUSD::cancelAuthorization_1Call;
