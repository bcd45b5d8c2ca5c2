// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title BursarAuthorizationReader
/// @notice Reads, for many (token, owner, nonce) items in one `eth_call`, the owner's token
/// balance and whether the EIP-3009 authorization nonce is used or cancelled.
/// @dev Never deployed. Its creation code (with the constructor arguments appended) is sent as an
/// `eth_call` without a `to`, and the constructor returns the answers instead of runtime code:
/// `abi.encode(uint256[] balances, bool[] used, bool[] ok)`. An item whose token calls fail or
/// answer malformed data has `ok == false` and never affects the others.
contract BursarAuthorizationReader {
    /// @notice More items than one read answers.
    error TooManyItems(uint256 count, uint256 max);
    /// @notice The three lists differ in length.
    error LengthMismatch();

    /// @notice The most items one read answers.
    uint256 public constant ITEMS_MAX = 512;

    constructor(address[] memory tokens, address[] memory owners, bytes32[] memory nonces) {
        uint256 count = tokens.length;
        if (count > ITEMS_MAX) revert TooManyItems(count, ITEMS_MAX);
        if (owners.length != count || nonces.length != count) revert LengthMismatch();
        uint256[] memory balances = new uint256[](count);
        bool[] memory used = new bool[](count);
        bool[] memory ok = new bool[](count);
        for (uint256 i = 0; i < count; i++) {
            (bool balanceCalled, bytes memory balanceOut) =
                tokens[i].staticcall(abi.encodeWithSignature("balanceOf(address)", owners[i]));
            (bool stateCalled, bytes memory stateOut) = tokens[i].staticcall(
                abi.encodeWithSignature("authorizationState(address,bytes32)", owners[i], nonces[i])
            );
            if (balanceCalled && stateCalled && balanceOut.length >= 32 && stateOut.length >= 32) {
                balances[i] = abi.decode(balanceOut, (uint256));
                // Any non-zero word counts as used: a malformed answer never reverts the read.
                used[i] = abi.decode(stateOut, (uint256)) != 0;
                ok[i] = true;
            }
        }
        bytes memory answer = abi.encode(balances, used, ok);
        assembly {
            return(add(answer, 32), mload(answer))
        }
    }
}
