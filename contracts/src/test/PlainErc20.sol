// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title PlainErc20
/// @notice A test token without EIP-3009: OpenZeppelin's ERC-20 with 6 decimals and an owner who
/// may `mint`. It has no `authorizationState`, no `transferWithAuthorization` and no EIP-712
/// domain, so an x402 `exact` payment in it can never settle; Bursar's tests use it to show that
/// such payments are refused at verification.
contract PlainErc20 is ERC20, Ownable {
    constructor(string memory name_, string memory symbol_, address initialOwner)
        ERC20(name_, symbol_)
        Ownable(initialOwner)
    {}

    /// Six decimals, like most dollar tokens.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// Creates `amount` new tokens for `to`. Owner only.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
